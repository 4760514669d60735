"""Anti-aliased (blur) pooling as in "Making Convolutional Networks Shift-Invariant Again" (Zhang, ICML 2019,
arXiv:1904.11486), laid out like the reference package ``antialiased_cnns.BlurPool`` (adobe/antialiased-cnns, v0.3).

Why not ``timm.layers.BlurPool2d``: timm pads symmetrically (``get_padding``) and keeps its filter as a
*non-persistent* buffer. The reference layer pads ``(floor, ceil)`` of ``(filt_size - 1) / 2`` on each axis — for
the even 4-tap filter that is 1 before and 2 after — and saves the filter as a persistent buffer named ``filt``.
Checkpoints trained with the reference layer (e.g. LWGANet's ``MRA.max_m2.filt``) carry that buffer, and the
asymmetric padding changes every output value, so models trained with it need this layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlurPool2dAsym", "binomial_filter"]

_PAD_MODES = {"reflect": "reflect", "refl": "reflect", "replicate": "replicate", "repl": "replicate",
              "zero": "constant"}


def binomial_filter(filt_size: int) -> torch.Tensor:
    """The normalised 2-D binomial filter ``a aᵀ / sum`` with ``a`` the ``filt_size``-th row of Pascal's triangle."""
    if filt_size < 1:
        raise ValueError(f"filt_size must be >= 1, got {filt_size}")
    a = torch.tensor([math.comb(filt_size - 1, i) for i in range(filt_size)], dtype=torch.float64)
    f = a[:, None] * a[None, :]
    return (f / f.sum()).float()


class BlurPool2dAsym(nn.Module):
    """Depthwise binomial blur followed by subsampling with ``stride``, reference-layout padding and buffer.

    Output size per axis: ``floor((n + filt_size - 1 - filt_size) / stride) + 1`` = ``ceil(n / stride)`` for the
    4-tap filter. ``reflect`` padding needs every input side longer than the larger pad (``ceil((filt_size-1)/2)``).

    Args:
        channels: number of input (= output) channels; the ``filt`` buffer is repeated per channel, ``(C, 1, k, k)``.
        filt_size: taps of the binomial filter (the reference default is 4).
        stride: subsampling step.
        pad_mode: ``reflect`` (reference default), ``replicate`` or ``zero``.
        device, dtype: where and in which float type the ``filt`` buffer is created (timm's factory passes them).
    """

    def __init__(self, channels: int, filt_size: int = 4, stride: int = 2, pad_mode: str = "reflect",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(_PAD_MODES)}, got {pad_mode!r}")
        self.channels = channels
        self.filt_size = filt_size
        self.stride = stride
        self.pad_mode = _PAD_MODES[pad_mode]
        before, after = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
        self.padding = (before, after, before, after)  # F.pad order: left, right, top, bottom
        # persistent on purpose: official checkpoints store it, and strict loading expects it
        filt = binomial_filter(filt_size).to(device=device, dtype=dtype or torch.get_default_dtype())
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))

    @property
    def min_input_size(self) -> int:
        """Smallest side the padding mode accepts (reflect padding must be shorter than the side)."""
        return max(self.padding) + 1 if self.pad_mode == "reflect" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filt_size == 1:
            return x[:, :, ::self.stride, ::self.stride]
        x = F.pad(x, self.padding, mode=self.pad_mode)
        return F.conv2d(x, self.filt, stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return f"{self.channels}, filt_size={self.filt_size}, stride={self.stride}, pad_mode={self.pad_mode!r}"
