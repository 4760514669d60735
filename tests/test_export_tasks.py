"""Task models: segmentation (one image in, per-pixel logits out) and change detection (two images) export whole;
detection exports raw head outputs + anchors, and ``export.detection_postprocess`` turns them into the PyTorch
model's detections."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import zoo.export as export

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


def _spread_head(model: torch.nn.Module) -> None:
    """Unit-variance head convolutions (instead of the tiny init + prior bias), so that many anchors score above
    the threshold with well separated scores: NMS and top-k then have something to decide."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.detector.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)


@pytest.mark.parametrize("head", ["retinanet", "fcos", "ssdlite"])
def test_detection_exports_raw_outputs_and_postprocess_reproduces_torch(head: str, tmp_path: Path) -> None:
    # min_size = max_size = the export size (a multiple of 32): the detector's own resize is the identity
    model = zoo.create_model(BACKBONE, task="detection", head=head, num_classes=3, min_size=64, max_size=64).eval()
    _spread_head(model)
    result = export.export_model(model, tmp_path, name="det", task="detection", input_size=64, exporter="legacy",
                                 n_random=2)
    parity = result.parity[0]
    assert parity.passed and parity.atol == 1e-3 and parity.agreement == 1.0
    assert parity.sets[0].max_abs_ref["cls_logits"] > 0.5  # informative logits, not the prior bias
    meta = json.loads((tmp_path / "det.onnx.json").read_text())
    names = ["cls_logits", "bbox_regression", *(["bbox_ctrness"] if head == "fcos" else []), "anchors"]
    assert [o["name"] for o in meta["outputs"]] == names and meta["inputs"][0]["name"] == "images"
    post = meta["postprocess"]
    det = model.detector
    n_anchors = sum(post["num_anchors_per_level"])
    c = 4 if head == "ssdlite" else 3  # SSD's background class
    assert meta["outputs"][0]["shape"] == [1, n_anchors, c] and meta["outputs"][-1]["shape"] == [n_anchors, 4]
    assert (post["head"], post["score_thresh"], post["nms_thresh"], post["detections_per_img"]) == (
        head, det.score_thresh, det.nms_thresh, det.detections_per_img)
    assert post["matches_torch_transform"] is True and post["label_offset"] == (1 if head == "ssdlite" else 0)

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(image)[0]
    raw = export.make_session(tmp_path / "det.onnx").run(None, {"images": image.numpy()})
    got = export.detection_postprocess(raw, post)[0]  # parameters from the JSON sidecar only
    assert len(expected["boxes"]) > 20  # the head was made to fire, so this compares real detections
    assert torch.equal(got["labels"], expected["labels"])
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    # on PyTorch's own raw outputs the post-processing is torchvision's, bit for bit
    adapter = export.DetectionAdapter(model, (3, 64, 64))
    with torch.no_grad():
        exact = export.detection_postprocess(adapter(image), post)[0]
    assert all(torch.equal(exact[k], expected[k]) for k in ("boxes", "scores", "labels"))


def test_detection_postprocess_rejects_outputs_of_another_model() -> None:
    post = {"head": "retinanet", "num_anchors_per_level": [10, 5], "box_coder": {"type": "BoxCoder",
            "weights": [1, 1, 1, 1]}, "score_thresh": 0.05, "topk_candidates": 10, "image_size": [8, 8]}
    outputs = {"cls_logits": torch.zeros(1, 12, 2), "bbox_regression": torch.zeros(1, 12, 4),
               "anchors": torch.zeros(12, 4)}
    with pytest.raises(ExportError, match="12 anchors, anchors 12, the sidecar's levels 15"):
        export.detection_postprocess(outputs, post)


def test_fasterrcnn_export_is_refused_with_the_reason(tmp_path: Path) -> None:
    model = zoo.create_model(BACKBONE, task="detection", head="fasterrcnn", num_classes=3, min_size=64,
                             max_size=64).eval()
    with pytest.raises(ExportError, match="fasterrcnn is refused because its second stage is data-dependent"):
        export.to_onnx(model, tmp_path / "det.onnx", 64, task="detection", exporter="legacy")
    assert not (tmp_path / "det.onnx").exists()
