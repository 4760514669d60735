"""Datasets in every format, the augmentation contracts, bad-data errors, collate and the synthetic generator."""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zoo.data import (
    ChangeDetectionDataset,
    CocoDetectionDataset,
    CsvImageDataset,
    ImageFolderDataset,
    SegmentationFolderDataset,
    build_transforms,
    collate_fn,
    write_synthetic,
)
from zoo.data.cli import main as data_cli
from zoo.errors import DataError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    for task in ("classification", "detection", "segmentation", "change_detection"):
        assert data_cli(["synth", "--task", task, "--out", str(root / task), "--n", "8", "--size", "48"]) == 0
    return root


def test_synth_is_deterministic(tmp_path, synth):
    write_synthetic("detection", tmp_path / "again", n=8, size=48)
    assert _digest(tmp_path / "again") == _digest(synth / "detection")
    write_synthetic("detection", tmp_path / "other", n=8, size=48, seed=1)
    assert _digest(tmp_path / "other") != _digest(synth / "detection")


def test_classification_folder_and_csv_agree(synth):
    root = synth / "classification"
    folder = ImageFolderDataset(root / "train")
    listed = CsvImageDataset(root / "train.csv", root=root, classes=folder.classes)
    assert folder.classes == ["0_rectangle", "1_ellipse", "2_triangle"]
    assert sorted((p.name, c) for p, c in folder.samples) == sorted((p.name, c) for p, c in listed.samples)
    x = folder[0]
    assert x["image"].shape == (3, 48, 48) and isinstance(x["target"], int)
    batch = next(iter(DataLoader(folder, batch_size=4, collate_fn=collate_fn("classification"))))
    assert batch["images"].shape == (4, 3, 48, 48) and batch["targets"].dtype == torch.long


def test_coco_boxes_are_xyxy_with_zero_based_labels(synth):
    root = synth / "detection"
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    ds = CocoDetectionDataset(root / "annotations" / "instances_train.json", root / "images")
    first = coco["images"][0]["id"]
    anns = [a for a in coco["annotations"] if a["image_id"] == first]
    s = ds[0]
    x, y, w, h = anns[0]["bbox"]
    assert s["target"]["boxes"][0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert s["target"]["labels"].tolist() == [a["category_id"] for a in anns]  # ids 0..2 map to themselves
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0  # detectors normalise inside


def test_detection_augmentation_moves_boxes_with_the_pixels(synth):
    root = synth / "detection"
    ds = CocoDetectionDataset(root / "annotations" / "instances_train.json", root / "images",
                              transform=build_transforms("detection", train=True))
    torch.manual_seed(0)
    np.random.seed(0)
    for i in range(len(ds)):
        for _ in range(2):
            s = ds[i]
            img = s["image"]
            for box in s["target"]["boxes"]:
                x1, y1, x2, y2 = (int(round(float(v))) for v in box)
                crop = img[:, y1:y2, x1:x2]
                saturated = (crop.max(0).values - crop.min(0).values) > 0.3  # coloured shape, not grey ground
                assert saturated.float().mean() > 0.3, (i, box)


def test_segmentation_masks_and_change_labels(synth):
    seg = SegmentationFolderDataset(synth / "segmentation" / "train", num_classes=4, validate="full")
    s = seg[0]
    assert s["target"].dtype == torch.int64 and set(s["target"].unique().tolist()) <= {0, 1, 2, 3}
    cd = ChangeDetectionDataset(synth / "change_detection" / "train")
    c = cd[0]
    assert set(c["target"].unique().tolist()) == {0, 1}  # LEVIR-CD 0/255 -> 0/1
    assert c["image_a"].shape == c["image_b"].shape == (3, 48, 48)


def test_change_augmentation_applies_one_geometry_to_both_dates_and_the_mask():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 60, (48, 48, 3)).astype(np.uint8)
    a[5:20, 25:40] = 250  # a bright patch, also the "change" mask
    mask = np.zeros((48, 48), np.uint8)
    mask[5:20, 25:40] = 1
    tf = build_transforms("change_detection", train=True, size=32)
    for seed in range(6):
        np.random.seed(seed)
        out = tf(image=a, image_b=a.copy(), mask=mask)
        assert torch.equal(out["image"], out["image_b"])
        m = torch.as_tensor(out["mask"]).bool()
        if m.any() and (~m).any():
            bright = out["image"].mean(0)
            assert bright[m].mean() > bright[~m].mean() + 2.0


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_corrupt_image_names_the_file_or_is_skipped_with_a_count(tmp_path):
    _png(tmp_path / "cat" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        ImageFolderDataset(tmp_path)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(tmp_path, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1 and "skipped 1 bad sample" in str(w[0].message)


def test_mask_size_mismatch_and_mask_label_out_of_range(tmp_path):
    _png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "masks" / "a.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"masks/a.png: mask size 9x8 differs"):
        SegmentationFolderDataset(tmp_path, num_classes=2)
    _png(tmp_path / "masks" / "a.png", np.full((8, 8), 3, np.uint8))
    with pytest.raises(DataError, match=r"a.png: mask label 3 >= num_classes=2"):
        SegmentationFolderDataset(tmp_path, num_classes=2, validate="full")
    lazy = SegmentationFolderDataset(tmp_path, num_classes=2)  # header-only scan: found when loaded
    with pytest.raises(DataError, match="mask label 3"):
        lazy[0]
    _png(tmp_path / "masks" / "a.png", np.full((8, 8), 255, np.uint8))  # ignore_index is fine
    assert len(SegmentationFolderDataset(tmp_path, num_classes=2, validate="full")) == 1


def _coco(tmp_path, bbox, cat=0, num_cats=2):
    _png(tmp_path / "img" / "x.png", np.zeros((10, 20, 3), np.uint8))
    ann = {"images": [{"id": 1, "file_name": "x.png", "width": 20, "height": 10}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": cat, "bbox": bbox, "iscrowd": 0}],
           "categories": [{"id": i, "name": f"c{i}"} for i in range(num_cats)]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return tmp_path / "ann.json", tmp_path / "img"


def test_box_outside_image_and_label_out_of_range(tmp_path):
    with pytest.raises(DataError, match=r"x.png: box \[15, 2, 8, 4\] \(annotation 7\) outside the 20x10 image"):
        CocoDetectionDataset(*_coco(tmp_path, [15, 2, 8, 4]))
    with pytest.raises(DataError, match=r"x.png: category 1 .* not in \[0, 1\)"):
        CocoDetectionDataset(*_coco(tmp_path, [1, 1, 4, 4], cat=1), num_classes=1)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = CocoDetectionDataset(*_coco(tmp_path, [15, 2, 8, 4]), skip_bad=True)
    assert len(ds) == 0 and "outside" in ds.skipped[0][1]


def test_csv_label_out_of_range(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "list.csv").write_text("path,label\na.png,5\n")
    with pytest.raises(DataError, match=r"list.csv:2 .*label '5'"):
        CsvImageDataset(tmp_path / "list.csv", num_classes=3)


def test_change_pair_size_mismatch(tmp_path):
    _png(tmp_path / "A" / "p.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "B" / "p.png", np.zeros((8, 6, 3), np.uint8))
    _png(tmp_path / "label" / "p.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"B/p.png: size"):
        ChangeDetectionDataset(tmp_path)


def test_loaders_feed_the_task_models_batch_format(synth):
    seg = SegmentationFolderDataset(synth / "segmentation" / "train", num_classes=4,
                                    transform=build_transforms("segmentation", train=True, size=32))
    b = next(iter(DataLoader(seg, batch_size=2, collate_fn=collate_fn("segmentation"))))
    assert b["images"].shape == (2, 3, 32, 32) and b["targets"].shape == (2, 32, 32)
    cd = ChangeDetectionDataset(synth / "change_detection" / "train",
                                transform=build_transforms("change_detection", train=False, size=32))
    b = next(iter(DataLoader(cd, batch_size=2, collate_fn=collate_fn("change_detection"))))
    assert set(b) == {"image_a", "image_b", "targets"} and b["targets"].shape == (2, 32, 32)
    root = synth / "detection"
    det = CocoDetectionDataset(root / "annotations" / "instances_val.json", root / "images",
                               transform=build_transforms("detection", train=False))
    b = next(iter(DataLoader(det, batch_size=2, collate_fn=collate_fn("detection"))))
    assert isinstance(b["images"], list) and set(b["targets"][0]) == {"boxes", "labels", "image_id"}
