"""Every registered LightZoo backbone exports to ONNX and computes the same logits in onnxruntime (<= 1e-4).

Parametrised over ``zoo.list_models()`` at collection time, so a new family is covered the moment it registers.
The fast TorchScript (legacy) exporter is tried first; where it writes a wrong graph, the library falls back to the
dynamo exporter by itself (``export_onnx_verified``) -- the test then checks that the fallback was recorded.
"""

from __future__ import annotations

import pytest
import torch

import zoo
from export.pipeline import export_onnx_verified
from export.spec import DEFAULT_ATOL

BACKBONES = zoo.list_models()


def smallest_input(model: torch.nn.Module) -> tuple[int, int, int]:
    """The model's declared ``min_input_size``, else 32x32 (every family pads or pools below its stride)."""
    cfg = model.pretrained_cfg
    c = cfg.get("input_size", (3, 224, 224))[0]
    min_size = cfg.get("min_input_size")
    return (c, *min_size[1:]) if min_size else (c, 32, 32)


@torch.no_grad()
def make_informative(model: torch.nn.Module, size: tuple[int, int, int]) -> torch.nn.Module:
    """Make a randomly initialised network's logits O(1) and input-dependent, so 1e-4 is a real test.

    At init, timm classifiers give logits ~1e-3 and layer-scale (1e-6) blocks leave the trunk almost constant, so
    the final LayerNorm amplifies float noise: any tolerance would then measure noise, not the export. So:
    layer-scale style constants (a parameter filled with one tiny value) become 1, BatchNorm statistics are
    re-estimated on random inputs, and the classifier is scaled so logits have unit spread.
    """
    for p in model.parameters():
        flat = p.flatten()
        if p.numel() > 1 and 0 < abs(float(flat[0])) < 1e-3 and torch.all(flat == flat[0]):
            p.fill_(1.0)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(8, *size))
    model.eval()
    clf = model.get_classifier()
    spread = model(torch.randn(8, *size)).std()
    clf.weight.div_(spread)
    if getattr(clf, "bias", None) is not None:
        clf.bias.div_(spread)
    return model


def test_backbones_are_registered() -> None:
    assert BACKBONES, "no LightZoo backbone is registered; the parity matrix below would be empty"


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_exports_to_onnx_with_logit_parity(name: str, tmp_path) -> None:
    model = zoo.create_model(name, num_classes=8).eval()
    size = smallest_input(model)
    make_informative(model, size)
    ex, parity = export_onnx_verified(model, tmp_path / f"{name}.onnx", size, exporter="legacy", n_random=2,
                                      optimize=False)
    assert parity.passed
    assert parity.max_abs_diff <= DEFAULT_ATOL["classification"] == 1e-4
    assert parity.agreement == 1.0
    # the logits are O(1), so the tolerance is not met trivially by tiny outputs
    assert parity.sets[0].max_abs_ref["logits"] > 0.3
    assert ex.spec.input_names == ["input"] and ex.spec.output_names == ["logits"]
    if ex.exporter != "legacy":
        assert ex.fallback_reason and "legacy" in ex.fallback_reason
