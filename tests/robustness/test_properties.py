"""Property-based tests (hypothesis) for the pure functions the robustness of everything else rests on: box
format conversions (COCO xywh in the loader and the evaluator, against torchvision's ``box_convert``), metric
invariants (top-k, confusion matrices, mIoU, change F1/IoU, COCO mAP) and config override parsing.
xScore's own properties are in ``tests/test_xscore_properties.py``."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.ops import box_convert

from zoo.config import all_keys, load_config, parse_override
from zoo.data import CocoDetectionDataset
from zoo.errors import ConfigError
from zoo.metrics import CocoEvaluator, change_metrics, coco_map, confusion_matrix, segmentation_metrics, topk_accuracy

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
W, H = 64, 48


def xywh_boxes(min_size: int = 0, max_size: int = 6) -> st.SearchStrategy[list[list[float]]]:
    """Boxes with positive size inside a W x H image, in COCO's [x, y, w, h] (quarter-pixel coordinates)."""
    def box(x: int, y: int, w: int, h: int) -> list[float]:
        return [x / 4, y / 4, min(w, 4 * W - x) / 4, min(h, 4 * H - y) / 4]

    one = st.builds(box, st.integers(0, 4 * W - 2), st.integers(0, 4 * H - 2), st.integers(1, 4 * W),
                    st.integers(1, 4 * H))
    return st.lists(one, min_size=min_size, max_size=max_size)


# ------------------------------------------------------------------------------------------ box conversions
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("coco")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(d / "a.png")
    return d


@FAST
@given(xywh_boxes(min_size=1))
def test_coco_loader_converts_xywh_like_torchvision(image_dir: Path, boxes: list[list[float]]) -> None:
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
           "annotations": [{"id": i, "image_id": 1, "category_id": 3, "bbox": b, "iscrowd": 0}
                           for i, b in enumerate(boxes)],
           "categories": [{"id": 3, "name": "c"}]}
    path = image_dir / "ann.json"
    path.write_text(json.dumps(ann))
    _, _, xyxy, labels = CocoDetectionDataset(path, image_dir).samples[0]
    want = box_convert(torch.tensor(boxes, dtype=torch.float64), "xywh", "xyxy").float().numpy()
    np.testing.assert_array_equal(xyxy, want)
    assert (labels == 0).all()


@FAST
@given(xywh_boxes(min_size=1))
def test_evaluator_converts_xyxy_back_to_the_same_xywh(boxes: list[list[float]]) -> None:
    xyxy = box_convert(torch.tensor(boxes, dtype=torch.float64), "xywh", "xyxy")
    ev = CocoEvaluator()
    ev.update([{"boxes": xyxy, "scores": torch.ones(len(boxes)), "labels": torch.zeros(len(boxes))}],
              [{"boxes": xyxy, "labels": torch.zeros(len(boxes))}])
    for got, want in zip(ev._gts, boxes):
        assert got["bbox"] == pytest.approx(want, abs=1e-9)
        assert got["area"] == pytest.approx(want[2] * want[3], abs=1e-9)
    assert [d["bbox"] for d in ev._dets] == [g["bbox"] for g in ev._gts]


@settings(max_examples=15, deadline=None)
@given(xywh_boxes(min_size=1, max_size=4), st.integers(0, 200), st.integers(0, 200))
def test_coco_map_perfect_and_translation_invariant(boxes: list[list[float]], dx: int, dy: int) -> None:
    xyxy = box_convert(torch.tensor(boxes, dtype=torch.float64), "xywh", "xyxy")
    labels = torch.arange(len(boxes)) % 2
    pred = [{"boxes": xyxy, "scores": torch.linspace(1.0, 0.5, len(boxes)), "labels": labels}]
    tgt = [{"boxes": xyxy, "labels": labels}]
    base = coco_map(pred, tgt)
    assert base["map"] == pytest.approx(1.0) and base["map50"] == pytest.approx(1.0)
    shift = torch.tensor([dx, dy, dx, dy], dtype=torch.float64)
    moved = coco_map([{**pred[0], "boxes": xyxy + shift}], [{**tgt[0], "boxes": xyxy + shift}])
    assert moved["map"] == pytest.approx(base["map"])


# ----------------------------------------------------------------------------------------------- metrics
@FAST
@given(st.integers(1, 12), st.integers(2, 9), st.integers(0, 2**31 - 1), st.floats(-50, 50))
def test_topk_is_monotone_complete_and_shift_invariant(n: int, c: int, seed: int, shift: float) -> None:
    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
    ks = list(range(1, c + 1))
    acc = topk_accuracy(logits, target, ks)
    vals = [acc[f"top{k}"] for k in ks]
    assert vals == sorted(vals) and vals[-1] == 1.0
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert topk_accuracy(logits + shift, target, ks) == acc  # softmax-free: ranking only
    onehot = torch.nn.functional.one_hot(target, c).float()
    assert topk_accuracy(logits, onehot, ks) == acc  # mixup-style targets: argmax is the class


@FAST
@given(st.integers(2, 6), st.integers(1, 80), st.integers(0, 2**31 - 1))
def test_confusion_and_segmentation_metrics(k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, n)
    target[rng.random(n) < 0.2] = 255  # ignored pixels
    pred = rng.integers(0, k, n)
    cm = confusion_matrix(pred, target, k)
    assert cm.sum() == (target != 255).sum()
    m = segmentation_metrics(cm)
    assert all(0.0 <= v <= 1.0 for v in (m["miou"], m["mdice"], m["pixel_acc"]) if not np.isnan(v))
    for iou, dice in zip(m["per_class_iou"], m["per_class_dice"]):
        if not np.isnan(iou):
            assert dice == pytest.approx(2 * iou / (1 + iou))  # Dice and IoU are one function of each other
    perm = rng.permutation(k)  # renaming the classes changes nothing
    valid = target != 255
    t2 = target.copy()
    t2[valid] = perm[target[valid]]
    m2 = segmentation_metrics(confusion_matrix(perm[pred], t2, k))
    assert m2["miou"] == pytest.approx(m["miou"], nan_ok=True)
    assert [m2["per_class_iou"][perm[c]] for c in range(k)] == pytest.approx(m["per_class_iou"], nan_ok=True)
    perfect = segmentation_metrics(confusion_matrix(np.where(valid, target, 0), target, k))
    assume(valid.any())
    assert perfect["miou"] == 1.0 and perfect["pixel_acc"] == 1.0


@FAST
@given(st.lists(st.integers(0, 1), min_size=1, max_size=60), st.integers(0, 2**31 - 1))
def test_change_f1_and_iou_are_symmetric_and_consistent(target: list[int], seed: int) -> None:
    t = np.array(target)
    p = np.random.default_rng(seed).integers(0, 2, len(t))
    a, b = change_metrics(confusion_matrix(p, t, 2)), change_metrics(confusion_matrix(t, p, 2))
    assert a["f1"] == pytest.approx(b["f1"], nan_ok=True) and a["iou"] == pytest.approx(b["iou"], nan_ok=True)
    assert (a["precision"], a["recall"]) == pytest.approx((b["recall"], b["precision"]), nan_ok=True)
    if not np.isnan(a["f1"]):
        assert a["f1"] == pytest.approx(2 * a["iou"] / (1 + a["iou"]))
    assert a["oa"] == pytest.approx((p == t).mean())


# ------------------------------------------------------------------------------------- override parsing
scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.none(),
                    st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.text(string.ascii_letters + "_-", min_size=1, max_size=8))


@FAST
@given(st.sampled_from(all_keys()), st.one_of(scalars, st.lists(scalars, max_size=4)))
def test_parse_override_round_trips_yaml_values(key: str, value: object) -> None:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    text = text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()
    assume(text)
    k, v = parse_override(f"{key}={text}")
    assert k == key and v == yaml.safe_load(text)


@FAST
@given(st.integers(-5, 10**6), st.floats(1e-9, 10.0), st.sampled_from(["true", "false", "on", "off", "yes", "no"]))
def test_overrides_set_exactly_what_they_say(epochs: int, lr: float, flag: str) -> None:
    if epochs < 1:
        with pytest.raises(ConfigError, match=rf"'train.epochs' must be >= 1; got {epochs}"):
            load_config(None, [f"train.epochs={epochs}"])
        return
    cfg = load_config(None, [f"train.epochs={epochs}", f"optim.lr={lr!r}", f"train.ema={flag}"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.train.ema) == (epochs, lr, flag in ("true", "on", "yes"))


@FAST
@given(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10), st.sampled_from(["", "train.", "optim."]))
def test_every_unknown_key_is_refused_by_name(leaf: str, section: str) -> None:
    key = section + leaf
    assume(key not in all_keys() and key not in ("task", "out_dir", "model", "data", "optim", "sched", "train"))
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}' \(override\)"):
        load_config(None, [f"{key}=1"])
