"""Weights that make a parity check meaningful on an untrained network.

At random init, timm classifiers give logits ~1e-3 and layer-scale (1e-6) blocks leave a trunk almost constant,
so a final LayerNorm amplifies float noise: any absolute tolerance then passes a wrong graph (we saw the legacy
exporter's wrong EMOv2 graph pass at init) or fails a right one. Tests and benchmarks export untrained models, so
they first call :func:`make_informative`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: gain of a residual branch's last norm under the probe (0 under timm's ``zero_init_last``, 1 at PyTorch's init)
RESIDUAL_GAIN = 0.5


@torch.no_grad()
def make_informative(model: nn.Module, size: Sequence[int], seed: int = 0) -> nn.Module:
    """In place: layer-scale style constants (a parameter filled with one value below 1e-3) become 1, BatchNorm
    statistics are re-estimated on random inputs, and a Linear/Conv classifier is scaled to unit logit spread.

    Residual blocks that mark their branch's last norm with timm's ``zero_init_last()`` get that norm's gain set
    to ``RESIDUAL_GAIN`` (0.5) instead of 1, before the BN statistics are estimated. With gain 1 on every branch a
    random deep ResNet is chaotic: each block amplifies a perturbation ~1.4x, so float32 rounding (1e-7) grows
    to 2e-4 at the logits of a 16-bottleneck ``phc_resnet50`` (PyTorch float32 against float64 at 32x32), and no
    float32 runtime can agree with PyTorch within 1e-4. At 0.5 the same model drifts 1.3e-6 while every branch still
    contributes half its signal, so a wrong graph stays visible. Trained ResNets end their branches with small
    norm gains, so 0.5 is closer to what a deployed network looks like. Models without the marker are unchanged.
    """
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        flat = p.flatten()
        if p.numel() > 1 and 0 < abs(float(flat[0])) < 1e-3 and torch.all(flat == flat[0]):
            p.fill_(1.0)
    for block in model.modules():  # residual branches: the last norm's gain to RESIDUAL_GAIN (see the docstring)
        if callable(getattr(block, "zero_init_last", None)):
            before = {n: p.clone() for n, p in block.named_parameters()}
            block.zero_init_last()
            for n, p in block.named_parameters():
                if not torch.equal(p, before[n]):
                    p.copy_(before[n] * RESIDUAL_GAIN)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        model.train()
        for _ in range(2):
            model(torch.randn(8, *size, generator=g))
    model.eval()
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(clf, (nn.Linear, nn.Conv2d)):
        spread = model(torch.randn(8, *size, generator=g)).std()
        clf.weight.div_(spread)
        if clf.bias is not None:
            clf.bias.div_(spread)
    return model
