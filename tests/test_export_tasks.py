"""Task models export whole: segmentation (one image in, per-pixel logits out) and change detection (two images)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import export
import zoo
from zoo.errors import ExportError

BACKBONE = "mobilenetv3_small_050"  # timm; strides 8/16/32 for the FPN heads, fast to trace


def test_segmentation_model_exports_whole_with_pixel_parity(tmp_path: Path) -> None:
    model = zoo.create_model(BACKBONE, task="segmentation", head="fpn", num_classes=4).eval()
    result = export.export_model(model, tmp_path, name="seg", task="segmentation", input_size=64,
                                 exporter="legacy", n_random=2)
    parity = result.parity[0]
    assert parity.passed and parity.atol == 1e-3  # the dense-output default
    assert parity.sets[0].total == 2 * 64 * 64  # agreement is counted per pixel
    assert parity.agreement == 1.0
    meta = json.loads((tmp_path / "seg.onnx.json").read_text())
    assert meta["task"] == "segmentation" and meta["outputs"][0]["shape"] == [1, 4, 64, 64]


def test_change_detection_model_exports_with_two_image_inputs(tmp_path: Path) -> None:
    model = zoo.create_model(BACKBONE, task="change_detection", num_classes=2).eval()
    result = export.export_model(model, tmp_path, name="cd", task="change_detection", input_size=64,
                                 exporter="legacy", n_random=2, dynamic_batch=True)
    assert result.parity[0].passed and result.parity[0].agreement == 1.0
    graph = onnx.load(str(tmp_path / "cd.onnx")).graph
    assert [i.name for i in graph.input] == ["input_a", "input_b"] and [o.name for o in graph.output] == ["logits"]
    meta = json.loads((tmp_path / "cd.onnx.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["input_a", "input_b"]
    assert meta["outputs"][0]["shape"] == ["batch", 2, 64, 64]


def test_detection_export_is_refused_with_an_explanation(tmp_path: Path) -> None:
    model = zoo.create_model(BACKBONE, task="detection", head="retinanet", num_classes=3, min_size=64,
                             max_size=64).eval()
    with pytest.raises(ExportError, match="data-dependent"):
        export.to_onnx(model, tmp_path / "det.onnx", 64, task="detection", exporter="legacy")
