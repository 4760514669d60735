"""ULSAM: Ultra-Lightweight Subspace Attention Module.

Saini, Jha, Das, Mittal, Mohan, "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural
Networks", WACV 2020, arXiv:2006.15102; official code Nandan91/ULSAM ``ulsam.py`` (commit 9a07d68).

The C input channels are split into g subspaces of C/g channels. Each subspace computes one spatial attention map:
depthwise 1x1 conv (with bias) -> BN -> ReLU -> 3x3 max-pool (stride 1, padding 1) -> 1x1 conv to a single map
(with bias) -> BN -> ReLU -> softmax over all H*W positions; the subspace's output is ``x * att + x``. The outputs
are concatenated back to C channels. Parameters: ``5*C + 3*g``.

The official module loops over g ``SubSpace`` modules; here the g subspaces run as one depthwise conv over all C
channels and one grouped (groups=g) 1x1 conv to g maps. Both are exactly the official per-subspace convs stacked
(BN is per channel either way), so the function and the parameter count are the same, with two kernel launches
instead of 2g. ``convert_official_ulsam`` maps the official per-subspace keys onto this layout. Two ops run as
equivalent cheaper ones (the 1x1 depthwise conv as a per-channel ``addcmul``, the 3x3 stride-1 max-pool of
non-negative values as maxima of shifted copies), because PyTorch's CPU kernels for both were slower than the whole
depthwise-separable layer ULSAM replaces. FlopCounterMode therefore no longer counts the 1x1 depthwise conv's
C*H*W multiply-adds. Under timm's export switch (``timm.layers.is_exportable()``, set by ``zoo export`` with
``timm.layers.set_layer_config(exportable=True)``; the only switch this module reads) it emits the official ops
instead (``attention_graph``): onnxruntime folds BN and ReLU into a real depthwise Conv and runs its NCHWc MaxPool,
where the eager rewrites become a dozen unfused elementwise ops. The forward does no work that depends only on the
weights (the 1x1 depthwise conv's weight and bias are read as per-channel views), so there is nothing to precompute
at ``eval()``. The input check is an FX leaf (timm's ``register_notrace_function`` and ``torch.fx.wrap``), so
``torch.fx`` and torchvision's feature extraction trace the module and keep the check.

Unlike the official file this module has no import-time side effects (the official one switches torch's default
tensor type to CUDA). The official BN layers use ``momentum=0.9``, which in PyTorch's convention makes the running
statistics follow the latest batch almost entirely (a Keras-style 0.9 was probably meant); we keep the official
value as the default so training reproduces the official module, and expose it as ``bn_momentum``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import is_exportable, register_notrace_function
from torch import nn

from ..errors import InputShapeError

__all__ = ["ULSAM", "convert_official_ulsam", "ulsam_param_count"]


def _max_pool_3x3_nonneg(a: torch.Tensor) -> torch.Tensor:
    """``MaxPool2d(3, stride=1, padding=1)`` for inputs >= 0 (here: right after a ReLU), as the maximum of shifted
    copies: rows first, then columns. Zero padding equals the pool's implicit -inf padding because every value is
    >= 0, and keeps infinities out of the graph (int8 calibration would see them). Several times faster on CPU than
    the max-pool kernel at these sizes, and plain elementwise ops for any exporter."""
    h, w = a.shape[-2:]
    p = F.pad(a, (1, 1, 1, 1))
    r = torch.maximum(torch.maximum(p[..., :, 0:w], p[..., :, 1:w + 1]), p[..., :, 2:w + 2])
    return torch.maximum(torch.maximum(r[..., 0:h, :], r[..., 1:h + 1, :]), r[..., 2:h + 2, :])


@register_notrace_function
def _check_input(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x``, or ``InputShapeError`` unless it is (B, channels, H, W); an FX leaf on the data path (so traced graphs
    keep it; a call whose result is unused would be dropped as dead code)."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise InputShapeError(f"ULSAM expects (B, {channels}, H, W) input, got {tuple(x.shape)}")
    return x


torch.fx.wrap("_check_input")


def ulsam_param_count(channels: int, num_splits: int) -> int:
    """Parameters of ULSAM(channels, num_splits): ``5*C + 3*g`` (as stated in the paper)."""
    return 5 * channels + 3 * num_splits


class ULSAM(nn.Module):
    """Subspace attention over ``num_splits`` (g) channel groups; keeps the input shape (C x H x W -> C x H x W).

    Args:
        channels: C, the number of input (= output) channels; must be divisible by ``num_splits``.
        num_splits: g, the number of subspaces (the paper's ImageNet networks use g=4).
        bn_momentum: momentum of the BN layers (official: 0.9, see the module docstring).
    """

    def __init__(self, channels: int, num_splits: int = 4, bn_momentum: float = 0.9) -> None:
        super().__init__()
        if not isinstance(num_splits, int) or num_splits < 1 or channels % num_splits:
            divisors = [d for d in range(1, min(channels, 64) + 1) if channels % d == 0]
            raise ValueError(f"ULSAM: num_splits={num_splits!r} must be a positive divisor of channels={channels}; "
                             f"e.g. one of {divisors}")
        self.channels, self.num_splits = channels, num_splits
        # depthwise 1x1 conv of every subspace, stacked (official: SubSpace.conv_dws, bias=True)
        self.conv_dws = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
        self.bn_dws = nn.BatchNorm2d(channels, momentum=bn_momentum)
        self.relu_dws = nn.ReLU()
        # the official nn.MaxPool2d(3, stride=1, padding=1) runs as _max_pool_3x3_nonneg (its input follows a ReLU)
        # each subspace's 1x1 conv to a single map, as one grouped conv (official: SubSpace.conv_point, bias=True)
        self.conv_point = nn.Conv2d(channels, num_splits, 1, groups=num_splits, bias=True)
        self.bn_point = nn.BatchNorm2d(num_splits, momentum=bn_momentum)
        self.relu_point = nn.ReLU()

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The g attention maps, (B, g, H, W), each a softmax over its H*W positions."""
        # A 1x1 depthwise conv is a per-channel affine map; computed as one addcmul it is the same function with
        # the same parameters, ~50x faster on CPU than the grouped-conv kernel (groups=C) at 14x14x512.
        c = self.channels
        a = torch.addcmul(self.conv_dws.bias.view(1, c, 1, 1), x, self.conv_dws.weight.view(1, c, 1, 1))
        a = self.relu_dws(self.bn_dws(a))
        a = _max_pool_3x3_nonneg(a)
        a = self.relu_point(self.bn_point(self.conv_point(a)))
        return torch.softmax(a.flatten(2), dim=-1).view_as(a)

    def attention_graph(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`attention` in the formulation an ONNX runtime runs fastest (used under ``is_exportable()``).

        The eager rewrites above are slow graphs: onnxruntime runs ``addcmul`` -> BN as three unfused elementwise
        ops and the shifted maxima as a Pad, six Slices and four Maxes (1.5 ms of a 17 ms MobileNetV1 at 2 threads),
        while the official ops map onto its kernels: the 1x1 depthwise Conv with the following BN and ReLU folded
        into it, and its NCHWc MaxPool. Same function (max-pool's -inf padding equals zero padding after a ReLU),
        same parameters; the exported file is parity-checked against the eager path.
        """
        a = self.relu_dws(self.bn_dws(self.conv_dws(x)))
        a = F.max_pool2d(a, 3, stride=1, padding=1)
        a = self.relu_point(self.bn_point(self.conv_point(a)))
        return torch.softmax(a.flatten(2), dim=-1).view_as(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x, self.channels)
        b, c, h, w = x.shape
        # the eager rewrites in attention() are fastest in PyTorch, the official ops in an exported graph;
        # (B, g, 1, H, W): one map shared by the C/g channels of a subspace
        att = (self.attention_graph(x) if is_exportable() else self.attention(x)).unsqueeze(2)
        xs = x.view(b, self.num_splits, c // self.num_splits, h, w)
        # x * att + x, with the +1 on the small map: one pass over the feature map instead of two
        return (xs * (att + 1.0)).view(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_splits={self.num_splits}"


def convert_official_ulsam(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Map the official module's ``{prefix}subspaces.{i}.{conv_dws,bn_dws,conv_point,bn_point}.*`` keys onto ours.

    Per-channel tensors of the g subspaces are concatenated in subspace order (the official forward concatenates
    the subspace outputs in that order); the single-map ``bn_point`` entries become one entry per subspace.
    Keys that are not under ``{prefix}subspaces.`` pass through unchanged.
    """
    head = prefix + "subspaces."
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if not key.startswith(head):
            out[key] = value
            continue
        idx, rest = key[len(head):].split(".", 1)
        groups.setdefault(rest, {})[int(idx)] = value
    for rest, parts in groups.items():
        ordered = [parts[i] for i in sorted(parts)]
        if rest.endswith("num_batches_tracked"):
            out[prefix + rest] = ordered[0]
        else:
            out[prefix + rest] = torch.cat([p.reshape(-1) if p.ndim == 0 else p for p in ordered], dim=0)
    return out
