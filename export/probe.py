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


@torch.no_grad()
def make_informative(model: nn.Module, size: Sequence[int], seed: int = 0) -> nn.Module:
    """In place: layer-scale style constants (a parameter filled with one value below 1e-3) become 1, BatchNorm
    statistics are re-estimated on random inputs, and a Linear/Conv classifier is scaled to unit logit spread."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        flat = p.flatten()
        if p.numel() > 1 and 0 < abs(float(flat[0])) < 1e-3 and torch.all(flat == flat[0]):
            p.fill_(1.0)
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
