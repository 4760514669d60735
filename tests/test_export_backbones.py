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
from export.probe import make_informative
from export.spec import DEFAULT_ATOL

# Families whose graphs only the (slow, ~20-60 s per model) dynamo exporter gets right: EMOv2's window attention
# writes through a view in place, which the TorchScript tracer drops; LightM-UNet's scan is a torch.export
# higher-order op. They still run by default; `-m "not slow"` leaves them out of a quick run.
DYNAMO_ONLY_FAMILIES = {"emov2", "lightm_unet"}
# Measured 2026-11-30: both exporters give max abs diff 2.5e-4 on O(2) logits (they agree with each other, so it
# is float32 drift through 50 layers with the probe weights, not a wrong graph); above the 1e-4 default.
KNOWN_DRIFT = {"phc_resnet50": "fp32 drift 2.5e-4 > 1e-4 in both exporters (not a wrong graph); under investigation"}


def _param(name: str):
    marks = []
    if zoo.registry.model_family(name) in DYNAMO_ONLY_FAMILIES:
        marks.append(pytest.mark.slow)
    if name in KNOWN_DRIFT:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DRIFT[name], raises=zoo.ExportError))
    return pytest.param(name, marks=marks)


BACKBONES = [_param(n) for n in zoo.list_models()]


def smallest_input(model: torch.nn.Module) -> tuple[int, ...]:
    """The model's declared ``min_input_size``, else 32x32 (every family pads or pools below its stride);
    volumetric models (``spatial_dims == 3``, no 2D input size) get 16^3."""
    cfg = model.pretrained_cfg
    if getattr(model, "spatial_dims", 2) == 3:
        return (getattr(model, "in_chans", 1), 16, 16, 16)
    c = (cfg.get("input_size") or (3, 224, 224))[0]
    min_size = cfg.get("min_input_size")
    return (c, *min_size[1:]) if min_size else (c, 32, 32)


def test_backbones_are_registered() -> None:
    assert BACKBONES, "no LightZoo backbone is registered; the parity matrix below would be empty"


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_exports_to_onnx_with_logit_parity(name: str, tmp_path) -> None:
    model = zoo.create_model(name, num_classes=8).eval()
    size = smallest_input(model)
    make_informative(model, size)
    ex, parity = export_onnx_verified(model, tmp_path / f"{name}.onnx", size, exporter="legacy", n_random=2,
                                      optimize=False)
    assert parity.passed and parity.agreement == 1.0
    assert ex.spec.input_names == ["input"] and ex.spec.output_names == ["logits"]
    if ex.spec.task == "classification":
        assert parity.max_abs_diff <= DEFAULT_ATOL["classification"] == 1e-4
    else:  # LightM-UNet is a whole segmentation network: per-pixel logits, the dense tolerance
        assert ex.spec.task == "segmentation" and parity.max_abs_diff <= DEFAULT_ATOL["segmentation"]
    # the outputs are O(1), so the tolerance is not met trivially by tiny values
    assert parity.sets[0].max_abs_ref["logits"] > 0.3
    if ex.exporter != "legacy":
        assert ex.fallback_reason and "legacy" in ex.fallback_reason
