"""LWGANet: light-weight grouped attention backbones for remote sensing.

Paper: "LWGANet: Addressing Spatial and Channel Redundancy in Remote Sensing Visual Tasks with Light-Weight Grouped
Attention", Wei Lu et al., AAAI 2026, arXiv:2501.10040.
Facts (layer order, channel split, kernel sizes, paddings, biases, norms, init, key names) were read from the
official repository AeroVILab-AHU/LWGANet, ``classification/models/LWGANet.py`` at commit d46a47d.

Every LWGA block splits its channels into four equal groups, each with its own receptive field:
point attention (1x1 gate), local attention (3x3 conv), medium-range attention (max-pool + stride-3 blur pool +
strip convolutions on the map and on its sheared copies) and a stage-dependent global branch (large selective
kernel on a 2x max-pooled map in stages 1-2, MHSA on a 2x max-pooled map in stage 3, full MHSA in stage 4).
Stages are joined by DRFD downsampling (a strided depthwise conv branch and a max-pool branch, fused by 1x1 conv).

Differences from the official code, none of which changes a result the official code produces:
- Names follow timm (``stem``, ``stages.i.downsample``/``blocks``, ``conv_head``, ``classifier``) and the paper
  (``point_attn``, ``local_attn``, ``medium_attn``, ``global_attn``); ``checkpoint_filter_fn`` renames official keys.
- The official shear used by the medium-range branch only works on square maps; ours shears by the number of rows,
  which is the same operation on square maps and also handles rectangular ones (needed for detection inputs).
- Under the export switch (``timm.layers.is_exportable()``, which the exporter turns on with
  ``timm.layers.set_layer_config(exportable=True)``; the model reads no other signal) max-unpooling is written with
  comparisons and selects (first maximum of each 2x2 window, as ``max_pool2d`` picks it), which is exactly
  ``max_unpool2d`` for non-overlapping windows but exports with every exporter (the official ``MaxUnpool2d`` fails
  the legacy exporter's output-shape check), and every other op is the plain operator.
- Eager mode uses faster forms of the pure data-movement and max operations (3x3 max pools as maxima of shifted
  views, 2x2 max pool in channels-last, ``x + unpool(y)`` as one scatter-add, shears as strided copies/views,
  the nearest-upsampled gate as an expanded repeat). Every convolution, norm and activation is the same call on
  the same values as in the official code, so logits are bit-identical: this matters because the 2x2
  max-pool/unpool pairs turn any rounding difference into a possibly different window maximum.
- In inference on single images, 1x1 convolutions run as one matrix product (it skips PyTorch's convolution
  dispatch and, with several threads, oneDNN's per-call weight reorder), but before the last 2x2 max-pool only
  where that product is bit-identical to ``conv2d``. Whether it is depends on the input size and the thread count
  (PyTorch hands larger 1x1 convolutions to oneDNN, which rounds differently, only with more than one thread), so
  it cannot be settled once at ``eval()``: each layer finds out on its first inference call of a configuration
  (its input and a fixed random probe through both; public ops only) and remembers the answer on itself. Dropping
  the product would cost LWGANet its margin against the official code; from stage 4 on, where no max-pool/unpool
  follows, the product is used without the check (~1e-7 relative rounding differences).
- Stage 4's medium-range branch (blur pool + four strip convs on 3x3 maps) runs in inference as one per-channel
  matrix composed from the conv weights. That matrix depends only on the weights and the input size: it is built
  once per input size and kept until a weight changes (``zoo.layers.weight_cache``), and not used when autograd
  needs the weights (training, eval-mode fine-tuning), which see the convolutions.
- Inference norms call the native batch-norm kernel directly (``EvalBatchNorm2d``, same kernel, same bits), and
  the medium-range strip convolutions read a channels-last copy of their small input (same bits, faster kernel;
  the sum goes back to NCHW before the sigmoid, whose rounding depends on the layout).
- For FX (timm's and torchvision's feature extraction) the input check, the medium-range branch, the 2x2 / 3x3 pools,
  the unpool-add and the inference forms of norms and 1x1 convs are single opaque calls (timm's
  ``register_notrace_function`` plus ``torch.fx.wrap``, which torchvision's tracer honours): they decide on input
  sizes, which FX proxies cannot branch on. The graph runs them as the eager model does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    SelectAdaptivePool2d,
    get_act_layer,
    is_exportable,
    register_notrace_function,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from ..checkpoint import unwrap_state_dict
from ..errors import InputShapeError
from ..layers.blurpool import BlurPool2dAsym, binomial_filter
from ..layers.weight_cache import WeightDerivedCache
from ..manifest import pretrained_cfgs
from ..registry import register_zoo_model
from ..weights import verified_pretrained_kwargs

__all__ = ["LWGANet", "LWGABlock", "DRFD", "MediumRangeAttention", "checkpoint_filter_fn"]

LayerFn = Callable[..., nn.Module]


# ---------------------------------------------------------------------------------------------------------------
# 2x2 max-pool / unpool pair that exports everywhere
# ---------------------------------------------------------------------------------------------------------------

def max_pool_2x2_with_mask(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """2x2/stride-2 max pooling that also returns, per window, which of its four positions was taken.

    The positions are scanned in ``max_pool2d``'s order (top-left, top-right, bottom-left, bottom-right) and the
    *first* maximum wins, as in ``max_pool2d(..., return_indices=True)``, so ties (flat inputs) unpool identically.
    Both sides must be even (the model checks its input size).
    """
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    m = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    take_a = a == m
    take_b = (b == m) & ~take_a
    taken = take_a | take_b
    take_c = (c == m) & ~taken
    take_d = ~(taken | take_c)
    return m, (take_a, take_b, take_c, take_d)


def max_unpool_2x2_masked(y: torch.Tensor, mask: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Inverse of :func:`max_pool_2x2_with_mask`: put ``y`` where each window's maximum was, zeros elsewhere."""
    zero = y.new_zeros(())
    ya, yb, yc, yd = (torch.where(t, y, zero) for t in mask)
    top = torch.stack((ya, yb), dim=-1)  # B, C, h, w, 2
    bottom = torch.stack((yc, yd), dim=-1)
    out = torch.stack((top, bottom), dim=-3)  # B, C, h, 2, w, 2
    B, C, h, _, w, _ = out.shape
    return out.reshape(B, C, 2 * h, 2 * w)


@register_notrace_function
@torch.fx.wrap
def max_pool_2x2(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """2x2/2 max pool keeping what unpooling needs: ``max_pool2d`` indices in eager mode (two native kernels,
    fastest), the position masks under the export switch (exporters have no portable ``max_unpool2d``)."""
    if is_exportable():
        return max_pool_2x2_with_mask(x)
    # PyTorch's channels-last CPU kernel is vectorised over channels and several times faster than the NCHW one,
    # enough to pay for the layout copy; it scans each window in the same order and keeps the first maximum, so
    # values and indices are identical (the pooled map goes back to NCHW so the convolutions after it see the
    # same layout as in the official code).
    pooled, idx = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, 2, return_indices=True)
    return pooled.contiguous(), idx


def max_unpool_2x2(y: torch.Tensor, where: Any) -> torch.Tensor:
    """Inverse of :func:`max_pool_2x2` (zeros except at each window's first maximum)."""
    if isinstance(where, tuple):
        return max_unpool_2x2_masked(y, where)
    return F.max_unpool2d(y, where, 2, 2)


@register_notrace_function
@torch.fx.wrap
def add_max_unpool_2x2(x: torch.Tensor, y: torch.Tensor, where: Any) -> torch.Tensor:
    """``x + max_unpool_2x2(y, where)`` for ``x`` of the pooled map's size.

    In eager mode one ``scatter_add`` into a copy of ``x``: it adds ``y`` at each window's maximum and leaves the
    other positions as they are, which is bit-identical to adding the zero-filled unpooled map (``v + 0 == v``), and
    saves the zero fill, the unpool and a full-size add.
    """
    if isinstance(where, tuple):
        return x + max_unpool_2x2_masked(y, where)
    B, C, H, W = x.shape
    out = x.reshape(B, C, H * W).clone(memory_format=torch.contiguous_format)
    return out.scatter_add_(2, where.reshape(B, C, -1), y.reshape(B, C, -1)).view(B, C, H, W)


@register_notrace_function
@torch.fx.wrap
def max_pool_3x3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``F.max_pool2d(x, 3, stride, padding=1)`` for stride 1 or 2, as maxima of shifted views in eager mode.

    A maximum is exact in any order, so the result is bit-identical; PyTorch's CPU max-pool kernel is several
    times slower than three ``maximum`` calls per axis on these small maps. Under the export switch the pooling op
    stays (onnxruntime's MaxPool is fast).
    """
    if is_exportable() or stride not in (1, 2):
        return F.max_pool2d(x, 3, stride, 1)
    H, W = x.shape[-2:]
    if stride == 2 and H % 2 == 0 and W % 2 == 0 and not (torch.is_grad_enabled() and x.requires_grad):
        return _max_pool_3x3_s2_even(_max_pool_3x3_s2_even(x, -2), -1)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    xp = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    r = torch.maximum(torch.maximum(xp[..., 0:stride * (Ho - 1) + 1:stride, :],
                                    xp[..., 1:stride * (Ho - 1) + 2:stride, :]),
                      xp[..., 2:stride * (Ho - 1) + 3:stride, :])
    return torch.maximum(torch.maximum(r[..., 0:stride * (Wo - 1) + 1:stride], r[..., 1:stride * (Wo - 1) + 2:stride]),
                         r[..., 2:stride * (Wo - 1) + 3:stride])


def _max_pool_3x3_s2_even(x: torch.Tensor, dim: int) -> torch.Tensor:
    """One axis of the 3-wide, stride-2, pad-1 max pool on an even-length axis, without padding: output ``i`` is
    ``max(x[2i], x[2i+1], x[2i-1])`` (the last term absent for ``i = 0``), two ``maximum`` calls, the second one
    in place."""
    even = x[..., 0::2, :] if dim == -2 else x[..., 0::2]
    odd = x[..., 1::2, :] if dim == -2 else x[..., 1::2]
    r = torch.maximum(even, odd)
    n = r.shape[dim]
    tail = r.narrow(dim, 1, n - 1)
    torch.maximum(tail, odd.narrow(dim, 0, n - 1), out=tail)
    return r


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------

def _needs_weight_grad(*params: torch.Tensor | None) -> bool:
    """Whether autograd must reach these parameters (then inference-only rewrites of them cannot be used)."""
    return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)


class EvalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose inference forward calls the native kernel directly.

    The module's Python forward (momentum bookkeeping, argument checks) and two dispatch layers cost more than the
    arithmetic on LWGANet's small maps, and a forward runs some 60 norms. ``native_batch_norm`` with running
    statistics is the very kernel ``F.batch_norm`` ends in, so the values are bit-identical. Training, autograd and
    the export switch use the ordinary forward; parameters, buffers and keys are those of the parent.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _batch_norm(self, x)


@register_notrace_function
@torch.fx.wrap
def _batch_norm(bn: EvalBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """:class:`EvalBatchNorm2d`'s forward, one call for FX (``nn.BatchNorm2d.forward`` checks ``x.dim()``, which
    FX proxies cannot answer, and FX only treats ``torch.nn``'s own classes as leaves)."""
    if bn.training or bn.running_mean is None or torch.is_grad_enabled() or is_exportable():
        return nn.BatchNorm2d.forward(bn, x)
    return torch.native_batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, False, 0.0, bn.eps)[0]


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution that, in inference on single images, runs as one matrix product when that product is
    bit-identical to ``conv2d`` for the shape and thread count at hand.

    Why: at batch 1 PyTorch sends small 1x1 convolutions through a layer of dispatch (and, with more than one
    thread, oneDNN with a per-call weight reorder) that costs more than the GEMM itself on LWGANet's maps. Whether
    ``mm`` rounds exactly like the convolution backend PyTorch picks is not assumed: the first inference call of
    each configuration (input shape, bias, dtype, thread count) computes both, on its input and on a fixed random
    probe, and keeps the product only if both agree to the bit (otherwise that configuration keeps ``conv2d``).
    The answers live on the layer (``gemm_equals_conv``), not in any module-level state. Bit-identity matters here
    because the 2x2 max-pool/unpool pairs downstream turn any rounding change into a possibly different window
    maximum. Training, autograd and the export switch always see the convolution. Parameters and state-dict keys
    are those of ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)
        # False where no 2x2 max-pool/unpool follows (stage 4, head): the product is then used even where it
        # rounds differently from the convolution backend (~1e-7 relative)
        self.bit_exact = True
        # (batch, in, height, width, out, bias, dtype, threads) -> whether the product equals conv2d bit for bit
        self.gemm_equals_conv: dict[tuple[Any, ...], bool] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or is_exportable():
            return super().forward(x)
        return _pointwise_conv_inference(self, x)

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        w = self.weight.view(self.out_channels, C)
        x2 = x.view(C, H * W)
        y = torch.mm(w, x2) if self.bias is None else torch.addmm(self.bias.view(-1, 1), w, x2)
        return y.view(1, self.out_channels, H, W)


@register_notrace_function
@torch.fx.wrap
def _pointwise_conv_inference(conv: PointwiseConv2d, x: torch.Tensor) -> torch.Tensor:
    """:class:`PointwiseConv2d`'s eval forward, one call for FX (it decides on the input's shape and layout)."""
    if (torch.is_grad_enabled() or x.ndim != 4 or x.shape[0] != 1 or x.dtype != torch.float32
            or x.device.type != "cpu" or not x.is_contiguous()):
        return F.conv2d(x, conv.weight, conv.bias)
    if not conv.bit_exact:
        return conv._gemm(x)
    key = (*x.shape, conv.out_channels, conv.bias is not None, x.dtype, torch.get_num_threads())
    ok = conv.gemm_equals_conv.get(key)
    if ok is None:
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
        ref = F.conv2d(x, conv.weight, conv.bias)
        ok = torch.equal(conv._gemm(x), ref) and torch.equal(conv._gemm(probe), F.conv2d(probe, conv.weight, conv.bias))
        conv.gemm_equals_conv[key] = ok
        return ref
    return conv._gemm(x) if ok else F.conv2d(x, conv.weight, conv.bias)


def _inplace_act(act_layer: LayerFn) -> nn.Module:
    """The activation, in place where the layer supports it (ReLU does; GELU ignores it).

    Every activation here reads a fresh conv/norm output that nothing else uses, so overwriting it is safe and
    saves a full-size allocation per call (ReLU in LWGANet-L2); the values are the same.
    """
    try:
        return act_layer(inplace=True)
    except TypeError:
        return act_layer()


class ConvMlp(nn.Module):
    """1x1 conv -> norm -> act -> 1x1 conv, both convs bias-free (the block MLP and the point-attention gate)."""

    def __init__(self, dim: int, hidden_dim: int, norm_layer: LayerFn, act_layer: LayerFn, out_dim: int | None = None,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = PointwiseConv2d(dim, hidden_dim, bias=False, **dd)
        self.norm = norm_layer(hidden_dim, **dd)
        self.act = _inplace_act(act_layer)
        self.fc2 = PointwiseConv2d(hidden_dim, out_dim or dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


class PointAttention(nn.Module):
    """PA: a per-pixel sigmoid gate from a 4x-expanded 1x1 MLP, added back to its input (``x + x * sigma(mlp(x))``)."""

    def __init__(self, dim: int, norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.mlp = ConvMlp(dim, dim * 4, norm_layer, act_layer, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mlp(x))
        if torch.is_grad_enabled():
            return x + x * gate
        return gate.mul_(x).add_(x)  # same values, no temporaries (x * g == g * x and a + b == b + a exactly)


class LocalAttention(nn.Module):
    """LA: 3x3 conv (no bias) -> norm -> act; it replaces its group (no residual, as the official block)."""

    def __init__(self, dim: int, norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, bias=False, device=device, dtype=dtype)
        self.norm = norm_layer(dim, device=device, dtype=dtype)
        self.act = _inplace_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def shear_rows(x: torch.Tensor) -> torch.Tensor:
    """Shift row ``i`` right by ``i`` (zeros fill in): ``(B, C, H, W) -> (B, C, H, W + H - 1)``.

    The official code pads each row with ``W`` zeros and re-reads the flat buffer with rows one shorter, which is
    this operation on the square maps it supports. In eager mode the map is copied once into a zero buffer through
    a strided view (row stride ``W + H``); under the export switch the pad-and-reshape form is kept.
    """
    B, C, H, W = x.shape
    Ws = W + H - 1
    if is_exportable():
        x = F.pad(x, (0, H)).reshape(B, C, H * (W + H))[..., : H * Ws]
        return x.reshape(B, C, H, Ws)
    if _is_channels_last(x):  # same shear, output in channels-last (see MediumRangeAttention.forward)
        out = torch.empty(B, C, H, Ws, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).zero_()
        out.as_strided((B, C, H, W), (C * H * Ws, 1, (Ws + 1) * C, C)).copy_(x)
        return out
    out = x.new_zeros(B, C, H, Ws)
    out.as_strided((B, C, H, W), (C * H * Ws, H * Ws, Ws + 1, 1)).copy_(x)
    return out


def _is_channels_last(x: torch.Tensor) -> bool:
    """Strictly channels-last (not also plain contiguous, which size-1 dims allow)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def unshear_rows(y: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of :func:`shear_rows`: ``(B, C, H, W + H - 1) -> (B, C, H, W)`` (a strided view in eager mode)."""
    B, C, H, Ws = y.shape
    if is_exportable():
        y = F.pad(y.reshape(B, C, H * Ws), (0, H))
        return y.reshape(B, C, H, Ws + 1)[..., :width]
    if _is_channels_last(y):
        return y.as_strided((B, C, H, width), (C * H * Ws, 1, (Ws + 1) * C, C))
    y = y.contiguous()
    return y.as_strided((B, C, H, width), (C * H * Ws, H * Ws, Ws + 1, 1))


def shear_cols(x: torch.Tensor) -> torch.Tensor:
    """Shift column ``j`` down by ``j``: ``(B, C, H, W) -> (B, C, H + W - 1, W)``, i.e. the row shear of the
    transposed map, transposed back (the official ``v_transform``), built contiguous in eager mode so the strip
    convolution reads it without a layout copy."""
    B, C, H, W = x.shape
    Hs = H + W - 1
    if is_exportable():
        return shear_rows(x.transpose(-1, -2)).transpose(-1, -2)
    if _is_channels_last(x):
        out = torch.empty(B, C, Hs, W, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).zero_()
        out.as_strided((B, C, H, W), (C * Hs * W, 1, W * C, (W + 1) * C)).copy_(x)
        return out
    out = x.new_zeros(B, C, Hs, W)
    out.as_strided((B, C, H, W), (C * Hs * W, Hs * W, W, W + 1)).copy_(x)
    return out


def unshear_cols(y: torch.Tensor, height: int) -> torch.Tensor:
    """Inverse of :func:`shear_cols`: ``(B, C, H + W - 1, W) -> (B, C, H, W)`` (a strided view in eager mode)."""
    B, C, Hs, W = y.shape
    if is_exportable():
        return unshear_rows(y.transpose(-1, -2), height).transpose(-1, -2)
    if _is_channels_last(y):
        return y.as_strided((B, C, height, W), (C * Hs * W, 1, W * C, (W + 1) * C))
    y = y.contiguous()
    return y.as_strided((B, C, height, W), (C * Hs * W, Hs * W, W, W + 1))


def nearest_is_block_repeat(n_in: int, n_out: int, k: int) -> bool:
    """Whether nearest interpolation from ``n_in`` to ``n_out`` samples reads source ``i // k`` for output ``i``
    (asked of ``F.interpolate`` itself, so the shortcut can never disagree with it)."""
    src = F.interpolate(torch.arange(n_in, dtype=torch.float32, device="cpu").view(1, 1, n_in, 1),
                        size=(n_out, 1), mode="nearest").view(-1)
    return n_in * k >= n_out and torch.equal(src, torch.div(torch.arange(n_out, device="cpu"), k,
                                                                    rounding_mode="floor").float())


def mul_nearest_upsampled(x: torch.Tensor, gate: torch.Tensor, block_repeat: bool | None = None) -> torch.Tensor:
    """``x * F.interpolate(gate, size=x.shape[-2:], mode="nearest")``, bit-identical.

    PyTorch's CPU nearest upsampling is slow on these maps; when its index map is a plain ``k``-fold repeat
    (always the case for the stride-3 blur pool's ``ceil(n / 3)`` maps) the gate is repeated by an expand and one
    copy instead. ``block_repeat`` is that answer for these sizes when the caller already knows it (``None``: ask
    :func:`nearest_is_block_repeat`). Other sizes and the export switch use ``F.interpolate``.
    """
    (H, W), (h, w) = x.shape[-2:], gate.shape[-2:]
    kh, kw = -(-H // h), -(-W // w)
    if block_repeat is None:
        block_repeat = nearest_is_block_repeat(h, H, kh) and nearest_is_block_repeat(w, W, kw)
    if is_exportable() or not block_repeat:
        return x * F.interpolate(gate, size=(H, W), mode="nearest")
    B, C = gate.shape[:2]
    up = gate[:, :, :, None, :, None].expand(B, C, h, kh, w, kw).reshape(B, C, h * kh, w * kw)
    return x * up[:, :, :H, :W]


class MediumRangeAttention(nn.Module):
    """MRA: a sigmoid gate from strip convolutions on a 3x-subsampled map, upsampled (nearest) onto the input.

    The map is max-pooled (3x3, stride 1) and blur-pooled (4-tap binomial, stride 3); four depthwise strip convs
    (``k x 3`` and ``3 x k``, each on the map and on its row-/column-sheared copy, i.e. along the diagonals) are
    summed, normalised and turned into the gate.
    """

    def __init__(self, dim: int, kernel_size: int, norm_layer: LayerFn, linear_form: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        k, p = kernel_size, kernel_size // 2
        self.blur = BlurPool2dAsym(dim, filt_size=4, stride=3, **dd)
        self.h_strip = nn.Conv2d(dim, dim, (k, 3), 1, (p, 1), groups=dim, bias=False, **dd)
        self.v_strip = nn.Conv2d(dim, dim, (3, k), 1, (1, p), groups=dim, bias=False, **dd)
        self.h_strip_sheared = nn.Conv2d(dim, dim, (k, 3), 1, (p, 1), groups=dim, bias=False, **dd)
        self.v_strip_sheared = nn.Conv2d(dim, dim, (3, k), 1, (1, p), groups=dim, bias=False, **dd)
        self.norm = norm_layer(dim, **dd)
        # Only for blocks whose output reaches no later 2x2 max-pool (stage 4): see _forward_eager.
        self.linear_form = linear_form
        # per input size: the composed strip operator (rebuilt when a weight changes), whether the gate's nearest
        # upsampling is a block repeat
        self._operators = WeightDerivedCache()
        self._block_repeat: dict[tuple[int, int, int, int], bool] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_exportable():
            return self._forward_convs(x)
        return _medium_range_attention(self, x)

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        # meta tensors (shape-only MAC counting) see the convolutions, so counted MACs stay the architecture's
        if self.linear_form and not x.is_meta and not _needs_weight_grad(*self._strips()):
            return self._gate(x, torch.sigmoid(self.norm(self._linear_att(max_pool_3x3(x, 1)))))
        return self._forward_convs(x)

    def _forward_convs(self, x: torch.Tensor) -> torch.Tensor:
        # Same convolutions, in the same order, as the official code. Merging them (e.g. the two strips into one
        # k x k kernel) is mathematically equal but rounds differently, and the 2x2 max-unpooling downstream is
        # discontinuous: a 1e-8 change can move a window's maximum and change the logits by ~1e-2.
        # The sums run in the official order, ((h + v) + h_sheared) + v_sheared, accumulated in place.
        t = self.blur(max_pool_3x3(x, 1))
        if not is_exportable():
            # oneDNN's depthwise kernel is ~30% faster on channels-last input for these k x 3 strips and sums the
            # same products in the same order: the strips, the shears, the sums and the norm give the same bits
            # in either layout (the test checks it on random maps at 1 and 2 threads)
            t = t.contiguous(memory_format=torch.channels_last)
        h, w = t.shape[-2:]
        att = self.h_strip(t)
        att += self.v_strip(t)
        att += unshear_rows(self.h_strip_sheared(shear_rows(t)), w)
        att += unshear_cols(self.v_strip_sheared(shear_cols(t)), h)
        # back to NCHW before the sigmoid: its vectorised and scalar tails round differently, so the same values
        # in another layout can give other bits
        return self._gate(x, torch.sigmoid(self.norm(att.contiguous())))

    def _gate(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``x`` times the gate upsampled (nearest) to its size; whether that upsampling is a block repeat is
        asked once per size."""
        if is_exportable():  # the probe compares tensors, which a tracer (torch.export) cannot; F.interpolate
            return mul_nearest_upsampled(x, gate, block_repeat=False)
        (H, W), (h, w) = x.shape[-2:], gate.shape[-2:]
        key = (h, H, w, W)
        block_repeat = self._block_repeat.get(key)
        if block_repeat is None:
            block_repeat = nearest_is_block_repeat(h, H, -(-H // h)) and nearest_is_block_repeat(w, W, -(-W // w))
            self._block_repeat[key] = block_repeat
        return mul_nearest_upsampled(x, gate, block_repeat)

    def _strips(self) -> tuple[torch.Tensor, ...]:
        return (self.h_strip.weight, self.v_strip.weight, self.h_strip_sheared.weight, self.v_strip_sheared.weight)

    def _linear_att(self, m: torch.Tensor) -> torch.Tensor:
        """Blur pool + four (sheared) strip convs + sum as one per-channel matrix, ``(h*w) x (H*W)``.

        On stage 4's 7x7 maps the five depthwise convolutions work on 3x3 maps and cost far more in call overhead
        than in arithmetic. The composed operator depends only on the strip weights and the map size: it is built
        once per size (two small matrix products) and kept until a weight changes. It rounds differently (~1e-7),
        which is harmless here because no 2x2 max-pool follows stage 4.
        """
        Bn, C, H, W = m.shape
        op = self._operators.get((H, W, m.dtype, m.device), self._strips(), lambda: self._compose(H, W, m))
        att = torch.matmul(op, m.reshape(Bn, C, H * W, 1))
        h, w = -(-H // self.blur.stride), -(-W // self.blur.stride)
        return att.view(Bn, C, h, w)

    def _compose(self, H: int, W: int, like: torch.Tensor) -> torch.Tensor:
        C = like.shape[1]
        basis, blur = _mra_linear_operators(H, W, self.h_strip.kernel_size[0], self.blur.stride, self.blur.padding,
                                            self.blur.pad_mode)
        basis, blur = basis.to(like), blur.to(like)
        hw = blur.shape[0]
        weights = torch.cat([w.reshape(C, -1) for w in self._strips()], dim=1)  # C, taps
        return (weights @ basis).view(C, hw, hw) @ blur  # C, h*w, H*W


@register_notrace_function
@torch.fx.wrap
def _medium_range_attention(mra: MediumRangeAttention, x: torch.Tensor) -> torch.Tensor:
    """:meth:`MediumRangeAttention._forward_eager`, one call for FX: the shears, the upsampling shortcut and the
    composed stage-4 operator all depend on the map size."""
    return mra._forward_eager(x)


def _mra_linear_operators(H: int, W: int, k: int, stride: int, padding: tuple[int, ...], pad_mode: str
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(strip basis ``(4 * 3k, hw * hw)``, blur matrix ``(hw, H * W)``) for :meth:`MediumRangeAttention._linear_att`.

    Both are obtained by running the very operations of the convolutional form (reflect-padded blur, strip
    convs with one-hot kernels, the shears) on one-hot images, so they cannot drift from it.
    """
    with torch.device("cpu"):
        eye = torch.eye(H * W, device="cpu").view(H * W, 1, H, W)
        filt = binomial_filter(4)[None, None]
        blur = F.conv2d(F.pad(eye, padding, mode=pad_mode), filt, stride=stride)  # HW, 1, h, w
        h, w = blur.shape[-2:]
        blur = blur.reshape(H * W, h * w).t().contiguous()
        img = torch.eye(h * w).view(h * w, 1, h, w)
        p = k // 2
        parts = []
        for kernel, pad, shear, unshear, size in (((k, 3), (p, 1), None, None, None),
                                                  ((3, k), (1, p), None, None, None),
                                                  ((k, 3), (p, 1), shear_rows, unshear_rows, w),
                                                  ((3, k), (1, p), shear_cols, unshear_cols, h)):
            taps = kernel[0] * kernel[1]
            onehot = torch.eye(taps).view(taps, 1, *kernel)
            src = img if shear is None else shear(img)
            out = F.conv2d(src, onehot, padding=pad)  # (h*w inputs, taps, ...)
            if unshear is not None:
                out = unshear(out, size)
            parts.append(out.reshape(h * w, taps, h * w).permute(1, 2, 0))  # taps, out position, in position
        basis = torch.cat(parts, dim=0).reshape(-1, h * w * h * w).contiguous()
    return basis, blur
class LargeSelectiveKernel(nn.Module):
    """LSK-style spatial selection between a 5x5 and a dilated 7x7 depthwise branch (official ``GA12`` core)."""

    def __init__(self, dim: int, act_layer: LayerFn, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj_1 = PointwiseConv2d(dim, dim, **dd)
        self.act = _inplace_act(act_layer)
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **dd)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3, **dd)
        self.conv1 = PointwiseConv2d(dim, dim // 2, **dd)
        self.conv2 = PointwiseConv2d(dim, dim // 2, **dd)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3, **dd)
        self.conv = PointwiseConv2d(dim // 2, dim, **dd)
        self.proj_2 = PointwiseConv2d(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.proj_1(x))
        a1 = self.conv0(x)
        a2 = self.conv_spatial(a1)
        a1, a2 = self.conv1(a1), self.conv2(a2)
        attn = torch.cat((a1, a2), dim=1)
        agg = torch.cat((attn.mean(dim=1, keepdim=True), attn.amax(dim=1, keepdim=True)), dim=1)
        sig = torch.sigmoid(self.conv_squeeze(agg))
        attn = self.conv(a1 * sig[:, 0:1] + a2 * sig[:, 1:2])
        return self.proj_2(x * attn)


class MultiHeadSelfAttention(nn.Module):
    """MHSA over all positions of an NCHW map with 4-channel heads, bias-free qkv and projection (official ``GA``)."""

    def __init__(self, dim: int, head_dim: int = 4, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = max(dim // head_dim, 1)
        self.attn_dim = self.num_heads * head_dim
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=False, device=device, dtype=dtype)
        self.proj = nn.Linear(self.attn_dim, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(x.permute(0, 2, 3, 1)).reshape(B, H * W, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # explicit product (not F.scaled_dot_product_attention): as fast at 4-channel heads and ~49 tokens, and
        # FlopCounterMode counts it, so MACs agree with the official code
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = attn.softmax(dim=-1) @ v
        x = self.proj(x.transpose(1, 2).reshape(B, H, W, self.attn_dim))
        return x.permute(0, 3, 1, 2)


class SelectiveGlobalAttention(nn.Module):
    """Global branch of stages 1-2: ``norm(x + unpool(LSK(maxpool2(x))))``."""

    def __init__(self, dim: int, norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.attn = LargeSelectiveKernel(dim, act_layer, device=device, dtype=dtype)
        self.norm = norm_layer(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, where = max_pool_2x2(x)
        return self.norm(add_max_unpool_2x2(x, self.attn(pooled), where))


class SparseGlobalAttention(nn.Module):
    """Global branch of stage 3: ``x + unpool(norm(MHSA(maxpool2(x))))`` (attention on a quarter of the tokens)."""

    def __init__(self, dim: int, norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(dim, device=device, dtype=dtype)
        self.norm = norm_layer(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, where = max_pool_2x2(x)
        return add_max_unpool_2x2(x, self.norm(self.attn(pooled)), where)


class DenseGlobalAttention(nn.Module):
    """Global branch of stage 4: ``norm(x + MHSA(x))``."""

    def __init__(self, dim: int, norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(dim, device=device, dtype=dtype)
        self.norm = norm_layer(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.attn(x))


GLOBAL_ATTENTION: tuple[type[nn.Module], ...] = (
    SelectiveGlobalAttention, SelectiveGlobalAttention, SparseGlobalAttention, DenseGlobalAttention)


class LWGABlock(nn.Module):
    """LWGA block: four channel groups (PA, LA, MRA, GA), concatenated, then ``x + norm(drop_path(mlp(.)))``."""

    def __init__(self, dim: int, stage_idx: int, kernel_size: int, mlp_ratio: float, drop_path: float,
                 norm_layer: LayerFn, act_layer: LayerFn, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % 4:
            raise ValueError(f"LWGA block width must be divisible by 4, got {dim}")
        self.split = dim // 4
        self.point_attn = PointAttention(self.split, norm_layer, act_layer, **dd)
        self.local_attn = LocalAttention(self.split, norm_layer, act_layer, **dd)
        self.medium_attn = MediumRangeAttention(self.split, kernel_size, norm_layer, linear_form=stage_idx == 3, **dd)
        self.global_attn = GLOBAL_ATTENTION[stage_idx](self.split, norm_layer, act_layer, **dd)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), norm_layer, act_layer, **dd)
        # the official block normalises the MLP output *after* drop path, before the residual add
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp_norm = norm_layer(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2, x3, x4 = torch.split(x, self.split, dim=1)
        y = torch.cat((self.point_attn(x1), self.local_attn(x2), self.medium_attn(x3), self.global_attn(x4)), dim=1)
        out = self.mlp_norm(self.drop_path(self.mlp(y)))
        return out.add_(x)  # x + out, in the fresh norm output (the norm's backward does not read its output)


class DRFD(nn.Module):
    """Dual-branch downsampling, ``C -> 2C`` at half resolution.

    A depthwise 3x3 conv doubles the channels; a strided depthwise 3x3 conv (-> act -> norm, in that order) and a
    3x3/2 max-pool (-> norm) branch are concatenated and fused by a 1x1 conv. Both branches give ``ceil(H / 2)``.
    """

    def __init__(self, dim: int, norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        out_dim = dim * 2
        self.conv = nn.Conv2d(dim, out_dim, 3, 1, 1, groups=dim, **dd)
        self.conv_c = nn.Conv2d(out_dim, out_dim, 3, 2, 1, groups=out_dim, **dd)
        self.act_c = _inplace_act(act_layer)
        self.norm_c = norm_layer(out_dim, **dd)
        self.norm_m = norm_layer(out_dim, **dd)
        self.fusion = PointwiseConv2d(out_dim * 2, out_dim, **dd)
        self.bit_exact = True  # False where no 2x2 max-pool/unpool follows (stage 4): see forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_exportable():
            # The exported graph spells the 1 -> 2 grouped conv as a depthwise conv on repeated channels:
            # onnxruntime's int8 grouped-conv kernel takes 30-100x its fp32 time on it (depthwise is a fast path),
            # and both exporters write the repeat as Unsqueeze/Expand/Reshape.
            B, C, H, W = x.shape
            x = F.conv2d(x.unsqueeze(2).expand(B, C, 2, H, W).reshape(B, 2 * C, H, W), self.conv.weight,
                         self.conv.bias, 1, 1, 1, self.conv.out_channels)
        elif self.bit_exact:
            x = self.conv(x)
        else:
            x = _grouped_conv_as_depthwise(self.conv, x)
        c = self.norm_c(self.act_c(self.conv_c(x)))
        m = self.norm_m(max_pool_3x3(x, 2))
        return self.fusion(torch.cat((c, m), dim=1))


@register_notrace_function
@torch.fx.wrap
def _grouped_conv_as_depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """DRFD's 1 -> 2 channels-per-group conv as a depthwise conv on the input with each channel repeated: oneDNN's
    depthwise kernel is 2-3x faster than its grouped one here, and rounds differently (~1e-7). Meta tensors
    (shape-only counting) see the module itself, as in the official code; one call for FX, which cannot ask a
    proxy whether it is meta."""
    if x.is_meta:
        return conv(x)
    return F.conv2d(x.repeat_interleave(2, dim=1), conv.weight, conv.bias, 1, 1, 1, conv.out_channels)


class Stem(nn.Module):
    """4x4 stride-4 patchify conv (no bias) + norm."""

    def __init__(self, in_chans: int, dim: int, norm_layer: LayerFn | None, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 4, 4, bias=False, device=device, dtype=dtype)
        self.norm = norm_layer(dim, device=device, dtype=dtype) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class LWGAStage(nn.Module):
    """Optional DRFD downsampling followed by ``depth`` LWGA blocks."""

    def __init__(self, in_dim: int, dim: int, stage_idx: int, depth: int, kernel_size: int, mlp_ratio: float,
                 drop_path: list[float], norm_layer: LayerFn, act_layer: LayerFn, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = DRFD(in_dim, norm_layer, act_layer, **dd) if stage_idx > 0 else nn.Identity()
        self.blocks = nn.Sequential(*[
            LWGABlock(dim, stage_idx, kernel_size, mlp_ratio, drop_path[i], norm_layer, act_layer, **dd)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------

class LWGANet(nn.Module):
    """LWGANet classifier / backbone with timm's model contract.

    Input sides must be multiples of 32 (up to 3 extra pixels are cut by the stride-4 stem) and at least 96:
    the 2x2 max-pool/unpool pairs of stages 1-3 need even maps, and the stride-3 blur pool's reflect padding needs
    stage-4 maps of at least 3x3. Other sizes raise :class:`zoo.errors.InputShapeError` naming a size that works.
    Rectangular inputs work (the official code needs square ones).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            stem_dim: int = 64,
            depths: tuple[int, ...] = (1, 2, 4, 2),
            kernel_sizes: tuple[int, ...] = (11, 11, 11, 11),
            mlp_ratio: float = 2.0,
            act_layer: str | LayerFn = "gelu",
            norm_layer: LayerFn = EvalBatchNorm2d,
            stem_norm: bool = True,
            head_hidden_size: int = 1280,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            device: Any = None,
            dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if len(depths) != 4 or len(kernel_sizes) != 4:
            raise ValueError("LWGANet has four stages: depths and kernel_sizes need four entries each")
        act_layer = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, stem_dim, norm_layer if stem_norm else None, **dd)
        dpr = [r.tolist() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))]
        dims = [stem_dim * 2 ** i for i in range(4)]
        self.stages = nn.Sequential(*[
            LWGAStage(dims[max(i - 1, 0)], dims[i], i, depths[i], kernel_sizes[i], mlp_ratio, dpr[i],
                      norm_layer, act_layer, **dd)
            for i in range(4)
        ])
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}") for i in range(4)]

        self.num_features = dims[-1]
        self.head_hidden_size = head_hidden_size
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = PointwiseConv2d(self.num_features, head_hidden_size, bias=False, **dd)
        self.head_act = _inplace_act(act_layer)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        # No 2x2 max-pool/unpool after the last block of stage 3 takes its own (from the block input): from the rest
        # of that block on, rounding changes stay ~1e-7.
        for m in (*self.stages[2].blocks[-1].modules(), *self.stages[3].modules(), self.conv_head):
            if isinstance(m, (PointwiseConv2d, DRFD)):
                m.bit_exact = False

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official: truncated normal (std 0.02) for every conv and linear weight, zero biases; BN left at defaults
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm contract ------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^conv_head", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier for ``num_classes`` (0 = none); the 1x1 ``conv_head`` to 1280 is kept (pre-logits).

        ``global_pool=''`` drops the pooling too: ``forward`` then returns the ``conv_head`` map, (B, 1280, H, W).
        The new classifier is created on the model's device and dtype, in its train/eval mode.
        """
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        ref = self.stem.conv.weight
        self.classifier = (nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
                           if num_classes > 0 else nn.Identity()).train(self.training)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` unchanged, or :class:`InputShapeError` for inputs the network cannot take, naming one that works."""
        return _check_lwganet_input(x, self.in_chans)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (strides 4, 8, 16, 32; widths C, 2C, 4C, 8C) as timm's ``forward_intermediates``.

        ``norm`` is accepted for API compatibility; LWGANet has no final norm, so it changes nothing.
        """
        if output_fmt != "NCHW":
            raise ValueError("LWGANet intermediates are NCHW only")
        x = self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested one (and the head), as timm models do."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.conv_head = nn.Identity()
            self.head_act = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool -> 1x1 conv to ``head_hidden_size`` (1280) -> act -> flatten [-> dropout -> linear]."""
        x = self.head_act(self.conv_head(self.global_pool(x)))
        x = self.flatten(x)
        if pre_logits:
            return x
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_notrace_function
@torch.fx.wrap
def _check_lwganet_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``x`` if LWGANet can take it, else a one-line :class:`InputShapeError` naming a size that works. Returns its
    input so that FX graphs keep the check (an opaque call: FX proxies cannot branch on shapes)."""
    if x.ndim != 4:
        raise InputShapeError(f"LWGANet expects a 4-D NCHW batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise InputShapeError(
            f"LWGANet was built for {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
            f"pass in_chans={x.shape[1]} to create_model or convert the images")
    sides = [int(s) for s in x.shape[-2:]]
    if all(s >= 96 and (s // 4) % 8 == 0 for s in sides):
        return x
    fix = "x".join(str(max(96, 32 * round(s / 32))) for s in sides)
    raise InputShapeError(
        f"LWGANet needs height and width that are multiples of 32 (plus at most 3 pixels) and at least 96: "
        f"got {sides[0]}x{sides[1]}. Resize or pad to e.g. {fix}. (Stages 1-3 max-pool/unpool 2x2 windows, "
        f"which needs even maps; the stride-3 blur pool needs stage-4 maps of at least 3x3.)")


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------------------

# Official sub-key prefix inside ``stages.<2i>.blocks.<j>.`` -> ours; first match wins, so order matters
# (``GA3.norm`` must become ``global_attn.norm``, the block's ``norm`` belongs to the GA12/GA4 branch).
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("mlp.0.", "mlp.fc1."), ("mlp.1.", "mlp.norm."), ("mlp.3.", "mlp.fc2."),
    ("PA.p_conv.0.", "point_attn.mlp.fc1."), ("PA.p_conv.1.", "point_attn.mlp.norm."),
    ("PA.p_conv.3.", "point_attn.mlp.fc2."),
    ("LA.conv.0.", "local_attn.conv."), ("LA.conv.1.", "local_attn.norm."),
    ("MRA.max_m2.", "medium_attn.blur."), ("MRA.H_att1.", "medium_attn.h_strip."),
    ("MRA.V_att1.", "medium_attn.v_strip."), ("MRA.H_att2.", "medium_attn.h_strip_sheared."),
    ("MRA.V_att2.", "medium_attn.v_strip_sheared."), ("MRA.norm.", "medium_attn.norm."),
    ("GA12.", "global_attn.attn."), ("GA3.", "global_attn."), ("GA4.", "global_attn.attn."),
    ("norm1.", "mlp_norm."), ("norm.", "global_attn.norm."),
)
_TOP_RENAMES: tuple[tuple[str, str], ...] = (
    ("Stem.proj.", "stem.conv."), ("Stem.norm.", "stem.norm."),
    ("avgpool_pre_head.1.", "conv_head."), ("head.", "classifier."),
)


def official_key_to_ours(key: str) -> str:
    """Map one key of an official LWGANet state dict onto this implementation (unknown keys pass unchanged).

    Official ``stages`` interleaves block stages (even indices) and DRFD layers (odd indices); ours nests the DRFD
    as ``downsample`` of the stage it feeds.
    """
    for old, new in _TOP_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "stages" and parts[1].isdigit():
        n = int(parts[1])
        if n % 2 == 1:
            return f"stages.{(n + 1) // 2}.downsample." + ".".join(parts[2:])
        if len(parts) > 4 and parts[2] == "blocks":
            rest = ".".join(parts[4:]) + "."
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            return f"stages.{n // 2}.blocks.{parts[3]}.{rest[:-1]}"
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept an official LWGANet state dict (already unwrapped from ``{'model': ...}``) or one of ours."""
    state_dict = unwrap_state_dict(state_dict)  # 'model'/'state_dict' wrappers and 'module.' prefixes
    if any(k.startswith("stem.") for k in state_dict):  # already in our layout
        return dict(state_dict)
    return {official_key_to_ours(k): v for k, v in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------------------

# name -> constructor args, from the official LWGANet_L{0,1,2}_* functions
MODEL_ARGS: dict[str, dict[str, Any]] = {
    "lwganet_l0": dict(stem_dim=32, depths=(1, 2, 4, 2), kernel_sizes=(11,) * 4, act_layer="gelu",
                       drop_path_rate=0.0),
    "lwganet_l1": dict(stem_dim=64, depths=(1, 2, 4, 2), kernel_sizes=(11,) * 4, act_layer="gelu",
                       drop_path_rate=0.1),
    "lwganet_l2": dict(stem_dim=96, depths=(1, 4, 4, 2), kernel_sizes=(11,) * 4, act_layer="relu",
                       drop_path_rate=0.1),
}


def _create_lwganet(variant: str, pretrained: bool = False, **kwargs: Any) -> LWGANet:
    model_args = {**MODEL_ARGS[variant], **kwargs}
    out_indices = model_args.pop("out_indices", (0, 1, 2, 3))
    model_args = verified_pretrained_kwargs(variant, pretrained, model_args)  # checked local file for timm
    return build_model_with_cfg(
        LWGANet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **model_args,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # the official training script evaluates with Resize(int(224 * 1.143)) + CenterCrop(224) and ImageNet stats
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "classifier", "min_input_size": (3, 96, 96),
        "license": "unknown (official repository states none)", **kwargs,
    }


default_cfgs = generate_default_cfgs(pretrained_cfgs({name: _cfg() for name in MODEL_ARGS}))  # weights_manifest.json


@register_zoo_model
def lwganet_l0(pretrained: bool = False, **kwargs: Any) -> LWGANet:
    """LWGANet-L0: C=32, depths (1, 2, 4, 2), GELU. Official ImageNet-1k weights: 1000 classes; NWPU-RESISC45: 45."""
    return _create_lwganet("lwganet_l0", pretrained, **kwargs)


@register_zoo_model
def lwganet_l1(pretrained: bool = False, **kwargs: Any) -> LWGANet:
    """LWGANet-L1: C=64, depths (1, 2, 4, 2), GELU. Official ImageNet-1k weights: 1000 classes; NWPU-RESISC45: 45."""
    return _create_lwganet("lwganet_l1", pretrained, **kwargs)


@register_zoo_model
def lwganet_l2(pretrained: bool = False, **kwargs: Any) -> LWGANet:
    """LWGANet-L2: C=96, depths (1, 4, 4, 2), ReLU. Official ImageNet-1k weights: 1000 classes; NWPU-RESISC45: 45."""
    return _create_lwganet("lwganet_l2", pretrained, **kwargs)

