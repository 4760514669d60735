"""EMOv2: Efficient MOdel v2, built from improved Inverted Residual Mobile Blocks (i2RMB).

Paper: "EMOv2: Pushing 5M Vision Model Frontier", Jiangning Zhang et al., arXiv:2412.06674.
Official code: https://github.com/zhangzjn/EMOv2, ``model/lib_emo/emo2.py`` and ``model/lib_emo/basic_modules.py``
at commit 582a96f. Every shape, epsilon, padding rule and parameter name below was read from that commit; the code is
our own.

Network (official names in brackets, kept as module names so official checkpoints load with unchanged keys):

- stem [``stage0``]: 3x3/2 conv (bias) + BN + SiLU, 3x3 depthwise conv + BN + SiLU, 1x1 conv (no norm, no act).
- four stages [``stage1`` .. ``stage4``] of i2RMB blocks [``iiRMB``]. The first block of a stage halves the
  resolution with a strided 5x5 depthwise conv, uses a plain 1x1 expansion with twice the stage's expansion ratio
  and has no shortcut. The other blocks of stages 1-2 expand with a 1x1 conv; those of stages 3-4 expand with
  spanning window attention [``EW_MHSA_Hybrid``]: one q/k projection and one v projection shared by a *close*
  window partition (contiguous w x w windows) and a *remote* one (a w x w grid of pixels spaced H/w apart), whose
  two attention outputs are summed.
- block pre-norms are BN (stages 1-2) and channel LayerNorm (stages 3-4), eps 1e-6 everywhere; expansion acts are
  SiLU (stages 1-2) and erf-GELU (stages 3-4); the depthwise conv is always followed by BN + SiLU; layer scale
  (init 1e-6) on the block output.
- head [``norm``, ``head``]: channel LayerNorm, global average pool, Linear.

Any input size works, as in the official code: strided convs pad as ``ceil`` and the attention zero-pads its input
(right and bottom) to a multiple of the window, attends over the padded grid (padded positions act as keys and
values, exactly as in the official model) and crops back.

Differences from the official code that do not change results: the forward returns a logits tensor (the official
returns ``{'out': x, 'out_kd': x}``, the same tensor twice; there is no separate distillation head, so nothing is
dropped from its checkpoints); the network runs channels_last; attention is one batched call for the close and
remote partitions (``F.scaled_dot_product_attention`` where PyTorch has a fused kernel for its shapes); window
partitions are single strided copies instead of chains of ``rearrange(...).contiguous()``.

Inference and export. In ``eval()`` every BatchNorm that follows a conv is folded into that conv's weights once
(on ``eval()`` or :meth:`EMOv2.fuse`) and kept in a :class:`zoo.layers.weight_cache.WeightDerivedCache`, which
rebuilds the fold when a weight changes (``load_state_dict`` after ``eval()``, in-place edits, ``.to()``); training,
and eval with autograd on the weights, run the plain conv + BN. While ``timm.layers.is_exportable()`` is true (the
exporter sets it with ``timm.layers.set_layer_config(exportable=True)``; it is the only export switch the model
reads) the forward takes graph-shaped paths written for onnxruntime: folds computed from the weights inside the
graph (the exporter turns them into constants), block pre-norm BNs folded into the expansion conv, erf-GELU spelled
the way onnxruntime fuses it, and one attention call per window partition. For FX (timm's and torchvision's feature
extraction) the input check and the window attention are single opaque calls (``register_notrace_function`` plus
``torch.fx.wrap``), because their window arithmetic on input shapes cannot run on FX proxies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, is_exportable, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import nn

from ..checkpoint import unwrap_state_dict
from ..errors import InputShapeError
from ..layers.weight_cache import WeightDerivedCache
from ..manifest import pretrained_cfgs
from ..registry import register_zoo_model
from ..weights import verified_pretrained_kwargs

__all__ = ["EMOv2", "IRMB2", "SpanningWindowAttention", "checkpoint_filter_fn"]

NORM_EPS = 1e-6  # official get_norm() uses eps=1e-6 for both BN and LN


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map.

    The ``nn.LayerNorm`` lives in a child called ``norm`` because that is where the official checkpoints keep its
    weights (``stage3.1.norm.norm.weight``, ``norm.norm.weight``).
    """

    def __init__(self, num_channels: int, eps: float = NORM_EPS, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.norm.normalized_shape, self.norm.weight, self.norm.bias,
                         self.norm.eps)
        return x.permute(0, 3, 1, 2)


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "bn":
        return partial(nn.BatchNorm2d, eps=NORM_EPS)
    if kind == "ln":
        return LayerNorm2d
    raise ValueError(f"unknown EMOv2 norm {kind!r}; use 'bn' or 'ln'")


# SiLU in place, as the official code does: it saves an allocation per block on the large stage-1/2 maps.
_ACTS: dict[str, Callable[[], nn.Module]] = {"silu": partial(nn.SiLU, inplace=True), "gelu": nn.GELU,
                                            "none": nn.Identity}


def _needs_weight_grad(*params: torch.Tensor | None) -> bool:
    """Whether autograd must reach these parameters (then a cached, detached rewrite of them cannot be used)."""
    return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)


class ConvNormAct(nn.Module):
    """Conv2d (+ BN) (+ activation) with the official ``ceil((k - s) / 2)`` padding and child names
    ``conv`` / ``norm`` / ``act``.

    In ``eval()`` the BN is folded into the conv (:meth:`folded_conv`): one pass over the output instead of two,
    ~3% of EMOv2-5M's CPU latency, results equal to float rounding. The fold is computed once and cached until a
    weight changes; under the export switch it is written into the graph instead.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: bool = False, act: str = "none", device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        padding = math.ceil((kernel_size - stride) / 2)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=bias, **dd)
        self.norm = nn.BatchNorm2d(out_chs, eps=NORM_EPS, **dd) if norm else nn.Identity()
        self.act = _ACTS[act]()
        self._fold_cache = WeightDerivedCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not isinstance(self.norm, nn.BatchNorm2d):
            return _act(self.act, self.norm(self.conv(x)))
        if is_exportable():
            weight, bias = self._fold_bn()  # in the graph, from the weights: the exporter folds it to constants
            return _act(self.act, self._conv(x, weight, bias))
        return _conv_bn_act_inference(self, x)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def _fold_bn(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the conv with the frozen BN after it folded in: ``conv(W * s) + (b - mean) * s + beta``
        with ``s = gamma / sqrt(var + eps)``."""
        c, bn = self.conv, self.norm
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if c.bias is not None:
            bias = bias + c.bias * scale
        return c.weight * scale.view(-1, 1, 1, 1), bias

    def folded_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached fold (computed again only after a weight or running statistic changed)."""
        c, bn = self.conv, self.norm
        return self._fold_cache.get("conv_bn", (c.weight, c.bias, bn.weight, bn.bias, bn.running_mean,
                                                bn.running_var), self._fold_bn)

    def train(self, mode: bool = True) -> ConvNormAct:
        super().train(mode)
        if mode:
            self._fold_cache.clear()
        elif isinstance(self.norm, nn.BatchNorm2d):
            self.folded_conv()  # fold once, on eval(), not on every forward
        return self


@register_notrace_function
@torch.fx.wrap
def _conv_bn_act_inference(m: ConvNormAct, x: torch.Tensor) -> torch.Tensor:
    """Eval forward of a :class:`ConvNormAct` with a BN: the cached fold, or conv + BN when autograd needs the
    weights (eval-mode fine-tuning, where a detached fold would cut their gradients). One call for FX, so the
    choice is made when the graph runs, not when it is traced."""
    if _needs_weight_grad(m.conv.weight, m.norm.weight):
        return _act(m.act, m.norm(m.conv(x)))
    weight, bias = m.folded_conv()
    return _act(m.act, m._conv(x, weight, bias))


class PointwiseExpansion(nn.Module):
    """The convolutional expansion op of an i2RMB: 1x1 conv with bias + activation (official ``Conv``; the extra
    ``net`` level keeps the official key ``eops.0.net.conv.weight``)."""

    def __init__(self, in_chs: int, out_chs: int, act: str, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.net = ConvNormAct(in_chs, out_chs, 1, bias=bias, act=act, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _act(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``act``; under the export switch, erf-GELU is spelled ``x * (erf(x / sqrt(2)) + 1) * 0.5``.

    That is the op order onnxruntime's GeluFusion recognises. The dynamo exporter decomposes ``F.gelu`` as
    ``x * (0.5 * (erf(x / sqrt(2)) + 1))``, which it does not, so every GELU would run as five elementwise passes
    instead of one fused kernel. Same function, same rounding to within an ulp.
    """
    if type(act) is nn.GELU and act.approximate == "none" and is_exportable():
        return x * (torch.erf(x / math.sqrt(2.0)) + 1.0) * 0.5
    return act(x)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v.

    ``F.scaled_dot_product_attention`` (fused kernels) wherever it has one for these shapes. EMOv2's values are wider
    than its queries (v head dim = exp_ratio x q head dim), and PyTorch's CPU flash kernel needs equal widths, so on
    CPU SDPA falls back to its unfused "math" path, which adds -inf row checks on top of the same two matmuls;
    there the plain two matmuls measured 5-12% faster end to end (benchmarks/emov2_vs_official.py), so we call
    them directly. Same numbers either way (tests compare against a window-by-window reference).
    """
    if q.device.type == "cpu" and q.shape[-1] != v.shape[-1]:
        attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        if dropout_p > 0.0:
            attn = F.dropout(attn, p=dropout_p)
        return attn @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class SpanningWindowAttention(nn.Module):
    """Spanning window attention (official ``EW_MHSA_Hybrid``), the expansion op of attention i2RMBs.

    q and k come from one 1x1 projection of the block input x (C -> 2C, no activation), v from another
    (C -> C_mid, with the stage activation); both are computed once and shared by two window partitions of the map
    zero-padded to a multiple of the window w:

    - close windows: contiguous w x w tiles (local detail);
    - remote windows: for each offset (i, j) inside an (H/w) x (W/w) cell, the w x w pixels at that offset in every
      cell, i.e. a dilated grid spanning the whole image (long range).

    Heads have ``dim_head`` channels for q/k and ``C_mid / heads`` for v; the output is the sum of both partitions'
    attention outputs, cropped back to H x W. Both partitions are batched into one attention call.
    """

    def __init__(self, dim: int, dim_out: int, dim_head: int, window_size: int, act: str = "gelu",
                 qkv_bias: bool = True, attn_drop: float = 0.0, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if dim % dim_head:
            raise ValueError(f"attention width {dim} is not a multiple of dim_head {dim_head}")
        self.dim_head = dim_head
        self.num_heads = dim // dim_head
        if dim_out % self.num_heads:
            raise ValueError(f"expanded width {dim_out} is not a multiple of {self.num_heads} heads")
        self.window_size = window_size
        self.attn_drop = attn_drop
        self.qk = ConvNormAct(dim, dim * 2, 1, bias=qkv_bias, device=device, dtype=dtype)
        self.v = ConvNormAct(dim, dim_out, 1, bias=qkv_bias, act=act, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_exportable():
            return self._forward_graph(x)
        return _spanning_window_attention(self, x)

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """Eager forward: both partitions as one batched attention call, windows as strided copies of the
        channels-last map, the remote partition added in place."""
        B, C, H, W = x.shape
        ws_h = self.window_size if self.window_size > 0 else H  # window_size <= 0: one global window (official)
        ws_w = self.window_size if self.window_size > 0 else W
        pad_b, pad_r = (-H) % ws_h, (-W) % ws_w
        Hp, Wp = H + pad_b, W + pad_r
        n_h, n_w = Hp // ws_h, Wp // ws_w
        heads = self.num_heads

        # Work on channel-last tokens: the 1x1 projections become plain GEMMs and every window copy below moves
        # whole contiguous head vectors. (Free when the network runs channels_last, as EMOv2.forward_stem makes it.)
        t = x.permute(0, 2, 3, 1)
        if pad_b or pad_r:
            # The official model pads the *input* of the projections, so padded positions carry the projection
            # biases (and act(bias) for v) and take part in the softmax; we keep that, the weights expect it.
            t = F.pad(t, (0, 0, 0, pad_r, 0, pad_b))
        qk = F.linear(t, self.qk.conv.weight.flatten(1), self.qk.conv.bias)
        v = self.v.act(F.linear(t, self.v.conv.weight.flatten(1), self.v.conv.bias))
        dv = v.shape[-1] // heads

        def windows(u: torch.Tensor, ch: int) -> torch.Tensor:
            # (B, Hp, Wp, ch * c) -> (2 * B * n_h * n_w, ch, ws_h * ws_w, c): close windows first, then remote ones.
            close = u.reshape(B, n_h, ws_h, n_w, ws_w, ch, -1).permute(0, 1, 3, 5, 2, 4, 6)
            remote = u.reshape(B, ws_h, n_h, ws_w, n_w, ch, -1).permute(0, 2, 4, 5, 1, 3, 6)
            return torch.stack((close, remote)).reshape(2 * B * n_h * n_w, ch, ws_h * ws_w, -1)

        qk = windows(qk, 2 * heads)
        o = _attention(qk[:, :heads], qk[:, heads:], windows(v, heads), self.attn_drop if self.training else 0.0)

        # Back to (B, Hp, Wp, heads * dv): write the close partition, then add the remote one in place.
        o = o.view(2, B, n_h, n_w, heads, ws_h, ws_w, dv)
        out = o[0].permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, heads * dv)
        remote = o[1].permute(0, 4, 1, 5, 2, 3, 6)
        out.view(B, ws_h, n_h, ws_w, n_w, heads, dv).add_(remote)
        if pad_b or pad_r:
            out = out[:, :H, :W]
        return out.permute(0, 3, 1, 2)

    def _forward_graph(self, x: torch.Tensor) -> torch.Tensor:
        """The same function written for a static graph, taken under the export switch (ONNX, ``torch.export``).

        In a graph every permute is a real Transpose and every stack/chunk a Concat/Split copy, while in eager
        PyTorch under channels_last most of them are free views; so this path is shaped by what onnxruntime runs:

        - each window partition is *one* Transpose per projection that moves pixels into windows and heads in
          front of tokens at once, and the two partitions run as two attention calls instead of one stacked
          batch (no Concat, Unsqueeze, Squeeze or batch Split);
        - each partition's output goes back to channel-last order with one Transpose (heads and values innermost:
          long contiguous runs), the two are added, and one Transpose takes the sum to NCHW. Transposing each
          partition straight to NCHW saves that third Transpose but copies in runs of one window row, and made
          ``emov2_5m`` ~40% slower in onnxruntime (2 threads, alternating runs on a loaded machine);
        - when the padded map is a single window (stage 4 at 224/256: 7x7 or 8x8 with its window of 7 or 8),
          the close and the remote partition are the same window with the same pixel order, so their attention
          outputs are equal: it is computed once and doubled (``o + o`` is exact in floating point).

        No in-place writes, which the TorchScript tracer would drop.
        """
        B, C, H, W = x.shape
        ws_h = self.window_size if self.window_size > 0 else H
        ws_w = self.window_size if self.window_size > 0 else W
        pad_b, pad_r = (-H) % ws_h, (-W) % ws_w
        Hp, Wp = H + pad_b, W + pad_r
        n_h, n_w = Hp // ws_h, Wp // ws_w
        heads, d = self.num_heads, self.dim_head
        t = x.permute(0, 2, 3, 1)
        if pad_b or pad_r:
            t = F.pad(t, (0, 0, 0, pad_r, 0, pad_b))
        # q and k as two projections (slices of the qk weights): in a graph, one projection split afterwards costs
        # a copy of both per partition, while two GEMMs cost nothing extra.
        w_qk, b_qk = self.qk.conv.weight.flatten(1), self.qk.conv.bias
        q = F.linear(t, w_qk[:C], None if b_qk is None else b_qk[:C])
        k = F.linear(t, w_qk[C:], None if b_qk is None else b_qk[C:])
        v = _act(self.v.act, F.linear(t, self.v.conv.weight.flatten(1), self.v.conv.bias))
        c_mid = v.shape[-1]
        dv = c_mid // heads
        drop = self.attn_drop if self.training else 0.0
        if n_h == 1 and n_w == 1:
            q, k = (u.reshape(B, Hp * Wp, heads, d).transpose(1, 2) for u in (q, k))
            v = v.reshape(B, Hp * Wp, heads, dv).transpose(1, 2)
            o = _attention(q, k, v, drop)  # (B, heads, Hp * Wp, dv)
            out = o.transpose(1, 2).reshape(B, Hp, Wp, c_mid)
            out = out + out
        else:
            g, n = B * n_h * n_w, ws_h * ws_w

            # Every view stays within 6 dimensions (XNNPACK's limit: a rank-7 tensor makes an ExecuTorch file fail
            # to load): of the 7 axes (B, n_h, ws_h, n_w, ws_w, heads, c) each transpose merges two that stay
            # neighbours on both sides of it, B with n_h (close windows) or n_w with heads (remote windows).
            def close_windows(u: torch.Tensor, c: int) -> torch.Tensor:  # (B, Hp, Wp, heads * c) -> (g, heads, n, c)
                u = u.reshape(B * n_h, ws_h, n_w, ws_w, heads, c).permute(0, 2, 4, 1, 3, 5)
                return u.reshape(g, heads, n, c)

            def remote_windows(u: torch.Tensor, c: int) -> torch.Tensor:
                u = u.reshape(B, ws_h, n_h, ws_w, n_w * heads, c).permute(0, 2, 4, 1, 3, 5)
                return u.reshape(g, heads, n, c)

            close = _attention(close_windows(q, d), close_windows(k, d), close_windows(v, dv), drop)
            remote = _attention(remote_windows(q, d), remote_windows(k, d), remote_windows(v, dv), drop)
            # (g, heads, ws_h * ws_w, dv) -> (B, H-order, W-order, heads, dv) of each partition
            close = close.reshape(B * n_h, n_w, heads, ws_h, ws_w, dv).permute(0, 3, 1, 4, 2, 5)
            remote = remote.reshape(B, n_h, n_w * heads, ws_h, ws_w, dv).permute(0, 3, 1, 4, 2, 5)
            out = close.reshape(B, Hp, Wp, c_mid) + remote.reshape(B, Hp, Wp, c_mid)
        if pad_b or pad_r:
            out = out[:, :H, :W]
        return out.permute(0, 3, 1, 2)


@register_notrace_function
@torch.fx.wrap
def _spanning_window_attention(attn: SpanningWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """:meth:`SpanningWindowAttention._forward_eager` as one call for FX: its padding and window counts are Python
    arithmetic on the input size, which FX proxies cannot branch on."""
    return attn._forward_eager(x)


class LayerScale2d(nn.Module):
    """Per-channel output scale; ``gamma`` has the official (1, C, 1, 1) shape so checkpoints load as they are."""

    def __init__(self, dim: int, init_value: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), init_value, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class IRMB2(nn.Module):
    """Improved Inverted Residual Mobile Block (i2RMB, official ``iiRMB``).

    ``x + ls(proj(e + dw(e)))`` with ``e = expansion(norm(x))``; the inner ``e + dw(e)`` shortcut and the outer one
    exist only when the block keeps its shape (not in the strided first block of a stage).
    """

    def __init__(self, dim_in: int, dim_out: int, exp_ratio: float, norm: str, act: str, dw_kernel: int = 5,
                 stride: int = 1, attention: bool = False, dim_head: int = 32, window_size: int = 7,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, drop_path: float = 0.0,
                 ls_init: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        dim_mid = int(dim_in * exp_ratio)
        self.has_skip = dim_in == dim_out and stride == 1
        self.norm = _norm_layer(norm)(dim_in, **dd)
        if attention:
            expansion: nn.Module = SpanningWindowAttention(dim_in, dim_mid, dim_head, window_size, act=act,
                                                           qkv_bias=qkv_bias, attn_drop=attn_drop, **dd)
        else:
            expansion = PointwiseExpansion(dim_in, dim_mid, act=act, bias=qkv_bias, **dd)
        self.eops = nn.ModuleList([expansion])  # official name: "efficient operators", a list of one here
        self.conv_local = ConvNormAct(dim_mid, dim_mid, dw_kernel, stride=stride, groups=dim_mid, norm=True,
                                      act="silu", **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.proj = ConvNormAct(dim_mid, dim_out, 1, **dd)
        self.ls = LayerScale2d(dim_out, ls_init, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _expand_graph(self, x: torch.Tensor) -> torch.Tensor:
        """``expansion(norm(x))`` with a frozen BN pre-norm folded into the 1x1 expansion conv.

        Under the export switch only: onnxruntime fuses a BN into the conv *before* it, never into the one after, so the
        pre-norm of every inner stage-1/2 block otherwise runs as its own pass over the block's largest input.
        conv(W, s * x + t) = conv(W * s, x) + W t, exact up to float rounding.
        """
        bn, net = self.norm, self.eops[0].net
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        w = net.conv.weight
        bias = w.flatten(1) @ shift
        if net.conv.bias is not None:
            bias = bias + net.conv.bias
        return _act(net.act, F.conv2d(x, w * scale.view(1, -1, 1, 1), bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training and isinstance(self.norm, nn.BatchNorm2d)
                and isinstance(self.eops[0], PointwiseExpansion) and is_exportable()):
            e = self._expand_graph(x)
        else:
            e = self.eops[0](self.norm(x))
        e = e + self.conv_local(e) if self.has_skip else self.conv_local(e)
        y = self.proj(self.proj_drop(e))
        if not self.has_skip:
            return self.ls(y)
        if self.training and isinstance(self.drop_path, DropPath):
            return x + self.drop_path(self.ls(y))
        return torch.addcmul(x, y, self.ls.gamma)  # x + gamma * y in one pass


class EMOv2(nn.Module):
    """EMOv2 classifier with timm's model contract (features, intermediates, head handling)."""

    def __init__(
        self,
        depths: Sequence[int] = (3, 3, 9, 3),
        embed_dims: Sequence[int] = (48, 72, 160, 288),
        exp_ratios: Sequence[float] = (2.0, 3.0, 4.0, 4.0),
        dim_heads: Sequence[int] = (16, 24, 32, 32),
        window_size: int = 7,
        norms: Sequence[str] = ("bn", "bn", "ln", "ln"),
        acts: Sequence[str] = ("silu", "silu", "gelu", "gelu"),
        attention: Sequence[bool] = (False, False, True, True),
        dw_kernel: int = 5,
        qkv_bias: bool = True,
        ls_init: float = 1e-6,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if global_pool not in ("avg", ""):
            raise ValueError(f"EMOv2 pools by mean ('avg') or not at all (''); got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.num_stages = len(depths)

        stem_dim = embed_dims[0] // 2
        self.stage0 = nn.ModuleList([
            ConvNormAct(in_chans, stem_dim, 3, stride=2, bias=True, norm=True, act="silu", **dd),
            ConvNormAct(stem_dim, stem_dim, 3, groups=stem_dim, norm=True, act="silu", **dd),
            ConvNormAct(stem_dim, stem_dim, 1, **dd),
        ])
        dprs = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.feature_info: list[dict[str, Any]] = []
        dim_prev, reduction, block_idx = stem_dim, 2, 0
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                first = j == 0  # stride-2 entry block: conv expansion with twice the ratio, no shortcut
                blocks.append(IRMB2(
                    dim_prev, embed_dims[i], exp_ratios[i] * (2 if first else 1), norm=norms[i], act=acts[i],
                    dw_kernel=dw_kernel, stride=2 if first else 1, attention=attention[i] and not first,
                    dim_head=dim_heads[i], window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                    proj_drop=proj_drop_rate, drop_path=dprs[block_idx], ls_init=ls_init, **dd,
                ))
                dim_prev = embed_dims[i]
                block_idx += 1
            reduction *= 2
            setattr(self, f"stage{i + 1}", nn.ModuleList(blocks))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=reduction, module=f"stage{i + 1}"))

        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.norm = _norm_layer(norms[-1])(embed_dims[-1], **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: truncated normal (std .02) for Linear, ones/zeros for norms, PyTorch defaults for convs.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.ModuleList]:
        """The four i2RMB stages (kept as ``stage1..stage4`` attributes for the official key layout)."""
        return [getattr(self, f"stage{i + 1}") for i in range(self.num_stages)]

    # --- timm contract -------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Layer-scale gammas and norm parameters: the official recipe excludes ``gamma``/``alpha``/``beta``
        keywords and (through timm's optimizer factory) every 1-D parameter; ``gamma`` is 4-D so it is named."""
        return {n for n, _ in self.named_parameters() if n.endswith(".gamma")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stage0", blocks=r"^stage(\d+)" if coarse else r"^stage(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``num_classes``-way Linear head (0: none, ``forward`` then returns the pooled features);
        ``global_pool=''`` also drops the pooling, so ``forward`` returns the (B, C, H, W) map. The new head is
        created on the model's device and dtype, in its train/eval mode."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"EMOv2 pools by mean ('avg') or not at all (''); got {global_pool!r}")
            self.global_pool = global_pool
        ref = self.stage0[0].conv.weight
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity()).train(self.training)

    @torch.jit.ignore
    def fuse(self) -> EMOv2:
        """Fold every BN that follows a conv into it now (``eval()`` does this too). The folds are kept until a
        weight changes and are used by eval forwards that need no gradient for the weights; the state_dict and the
        training forward are unchanged."""
        for m in self.modules():
            if isinstance(m, ConvNormAct) and isinstance(m.norm, nn.BatchNorm2d):
                m.folded_conv()
        return self

    def _run_stage(self, stage: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in stage:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_image_batch(x, self.in_chans)
        # channels_last all the way: depthwise and 1x1 convs run faster on CPU, the channel LayerNorms and the
        # attention's token layout become free views. Results are the same tensors, only their strides differ.
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.stage0:
            x = layer(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (strides 4, 8, 16, 32) for ``indices``; ``norm=True`` applies the head's LayerNorm to the
        last stage's output when it is taken."""
        if output_fmt != "NCHW":
            raise ValueError(f"EMOv2 intermediates are NCHW maps; output_fmt={output_fmt!r} is not supported")
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        intermediates = []
        x = self.forward_stem(x)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        last = self.num_stages - 1
        for i, stage in enumerate(stages):
            x = self._run_stage(stage, x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        if len(stages) == self.num_stages:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last wanted index (and the norm/head on request)."""
        take_indices, max_index = feature_take_indices(self.num_stages, indices)
        for i in range(max_index + 1, self.num_stages):
            delattr(self, f"stage{i + 1}")
        self.num_stages = max_index + 1
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, four stages and the final channel LayerNorm; returns an NCHW map at stride 32."""
        x = self.forward_stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_notrace_function
@torch.fx.wrap
def _check_image_batch(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``x`` unchanged if it is a (B, in_chans, H, W) batch, else a one-line :class:`InputShapeError`. Returns its
    input so that FX graphs keep the check (an opaque call: FX proxies cannot branch on shapes)."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise InputShapeError(
            f"EMOv2 expects a (B, {in_chans}, H, W) image batch, got shape {tuple(x.shape)}; "
            f"e.g. (1, {in_chans}, 224, 224). Any H, W >= 1 works (the attention pads to its window)."
        )
    return x


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official EMOv2 state_dict onto our model.

    Our module names are the official ones, so this is nearly the identity: wrappers (``net``/``net_E``/
    ``state_dict``/``model``) and ``module.`` prefixes are removed by ``zoo.checkpoint.read_state_dict`` before we
    get here; we strip a leftover ``module.`` for callers that hand us a raw dict, accept the classifier under
    either the official ``head.`` or timm's ``fc.`` spelling, and leave everything else to the strict load, which
    names any key that does not fit.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in unwrap_state_dict(state_dict).items():  # timm's file loader leaves 'net'/'net_E' wrappers
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("fc."):
            k = "head." + k[len("fc."):]
        out[k] = v
    if isinstance(getattr(model, "head", None), nn.Identity):  # headless model (num_classes=0): drop classifier
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    return out


def _create_emov2(variant: str, pretrained: bool = False, **kwargs: Any) -> EMOv2:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    kwargs = verified_pretrained_kwargs(variant, pretrained, kwargs)  # checked local file for timm's loader
    return build_model_with_cfg(
        EMOv2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(size: int = 224, **kwargs: Any) -> dict[str, Any]:
    # Official eval transform: resize to size / 0.875 (bicubic), centre crop, ImageNet mean/std.
    return {
        "num_classes": 1000, "input_size": (3, size, size), "pool_size": (size // 32, size // 32),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stage0.0.conv", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2412.06674", "origin_url": "https://github.com/zhangzjn/EMOv2", **kwargs,
    }


# One tag per released file, derived from weights_manifest.json (the one place to edit); sizes without weights
# get an ``untrained`` tag.
default_cfgs = generate_default_cfgs(pretrained_cfgs({
    "emov2_1m": _cfg(), "emov2_1m_256": _cfg(256), "emov2_1m_512": _cfg(512),
    "emov2_2m": _cfg(), "emov2_2m_256": _cfg(256), "emov2_2m_512": _cfg(512),
    "emov2_5m": _cfg(), "emov2_5m_256": _cfg(256), "emov2_5m_512": _cfg(512),
    "emov2_20m": _cfg(), "emov2_20m_256": _cfg(256),
}))

# Official variant table (EMO2_{1M,2M,5M,20M}_k5_hybrid). drop_path is the official training default.
VARIANTS: dict[str, dict[str, Any]] = {
    "1m": dict(depths=(2, 2, 8, 3), embed_dims=(32, 48, 80, 180), exp_ratios=(2.0, 2.5, 3.0, 3.5),
               dim_heads=(16, 16, 20, 20), drop_path_rate=0.04036),
    "2m": dict(depths=(3, 3, 9, 3), embed_dims=(32, 48, 120, 200), exp_ratios=(2.0, 2.5, 3.0, 3.5),
               dim_heads=(16, 16, 20, 20), drop_path_rate=0.05),
    "5m": dict(depths=(3, 3, 9, 3), embed_dims=(48, 72, 160, 288), exp_ratios=(2.0, 3.0, 4.0, 4.0),
               dim_heads=(16, 24, 32, 32), drop_path_rate=0.05),
    "20m": dict(depths=(3, 3, 13, 3), embed_dims=(64, 128, 320, 448), exp_ratios=(2.0, 3.0, 4.0, 4.0),
                dim_heads=(16, 32, 32, 32), drop_path_rate=0.1),
}
# The official _256 / _512 variants differ only in the attention window (8 instead of 7).
WINDOW_SIZES = {224: 7, 256: 8, 512: 8}


def _variant(size_name: str, resolution: int, pretrained: bool, **kwargs: Any) -> EMOv2:
    name = f"emov2_{size_name}" + ("" if resolution == 224 else f"_{resolution}")
    args = dict(VARIANTS[size_name], window_size=WINDOW_SIZES[resolution])
    return _create_emov2(name, pretrained=pretrained, **dict(args, **kwargs))


@register_zoo_model
def emov2_1m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("1m", 224, pretrained, **kwargs)


@register_zoo_model
def emov2_1m_256(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("1m", 256, pretrained, **kwargs)


@register_zoo_model
def emov2_1m_512(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("1m", 512, pretrained, **kwargs)


@register_zoo_model
def emov2_2m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("2m", 224, pretrained, **kwargs)


@register_zoo_model
def emov2_2m_256(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("2m", 256, pretrained, **kwargs)


@register_zoo_model
def emov2_2m_512(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("2m", 512, pretrained, **kwargs)


@register_zoo_model
def emov2_5m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("5m", 224, pretrained, **kwargs)


@register_zoo_model
def emov2_5m_256(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("5m", 256, pretrained, **kwargs)


@register_zoo_model
def emov2_5m_512(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("5m", 512, pretrained, **kwargs)


@register_zoo_model
def emov2_20m(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("20m", 224, pretrained, **kwargs)


@register_zoo_model
def emov2_20m_256(pretrained: bool = False, **kwargs: Any) -> EMOv2:
    return _variant("20m", 256, pretrained, **kwargs)
