"""Bad image files and annotations: each is a ``DataError`` naming the file (and the box, label or size at fault).

Decided behaviour: grey, RGBA and 16-bit images are not errors; they are converted to 8-bit RGB (alpha dropped,
16-bit scaled by 1/257 rather than clipped). Corrupt, empty, non-image and decompression-bomb files are errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.data import (
    ChangeDetectionDataset,
    CocoDetectionDataset,
    CsvImageDataset,
    ImageFolderDataset,
    SegmentationFolderDataset,
)
from zoo.data.io import image_size, read_image, read_mask
from zoo.errors import DataError

RGB = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _truncated(path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RGB).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: _truncated(p / "cut.png", "PNG"), "cut.png: unreadable or corrupt image (image file is truncated"),
        (lambda p: _truncated(p / "cut.jpg", "JPEG"), "cut.jpg: unreadable or corrupt image ("),
        (lambda p: (p / "empty.png").write_bytes(b"") and None or p / "empty.png",
         "empty.png: unreadable or corrupt image (cannot identify image file"),
        (lambda p: (p / "notes.jpg").write_text("not an image") and None or p / "notes.jpg",
         "notes.jpg: unreadable or corrupt image (cannot identify image file"),
    ],
    ids=["truncated-png", "truncated-jpeg", "zero-bytes", "text-file"],
)
def test_broken_image_files_name_the_file(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as e:
        read_image(path)
    assert str(path) in str(e.value) and match in str(e.value)


def test_decompression_bomb_is_refused_by_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _png(tmp_path / "bomb.png", RGB)  # 1024 pixels; Pillow errors above twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)
    for read in (image_size, read_image, read_mask):
        with pytest.raises(DataError) as e:
            read(path)
        assert f"{path}: refused as a possible decompression bomb" in str(e.value)
        assert "raise PIL.Image.MAX_IMAGE_PIXELS" in str(e.value)
    from zoo.data.transforms import load_image  # zoo predict and calibration read images through it

    with pytest.raises(DataError, match="bomb.png: refused as a possible decompression bomb"):
        load_image(path, {"color": "rgb"})
    (tmp_path / "cls" / "a").mkdir(parents=True)
    path.rename(tmp_path / "cls" / "a" / "bomb.png")
    with pytest.raises(DataError, match="bomb.png: refused as a possible decompression bomb"):
        ImageFolderDataset(tmp_path / "cls")  # caught when the dataset is indexed, before any decoding


def test_grey_rgba_and_16bit_images_are_converted(tmp_path: Path) -> None:
    grey = read_image(_png(tmp_path / "grey.png", RGB[..., 0]))
    assert grey.shape == (32, 32, 3) and grey.dtype == np.uint8
    assert (grey == RGB[..., :1]).all()
    rgba = read_image(_png(tmp_path / "rgba.png", np.dstack([RGB, np.zeros((32, 32, 1), np.uint8)])))
    assert (rgba == RGB).all()  # alpha dropped, colours kept (a fully transparent pixel keeps its colour)
    deep = (np.arange(32 * 32, dtype=np.uint16) * 64).reshape(32, 32)  # 0 .. 65472
    with Image.fromarray(deep) as im:
        im.save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # Pillow reads it as 16-bit
    out = read_image(tmp_path / "deep.png")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[..., 0].ravel().tolist() == np.clip(np.rint(deep / 257.0), 0, 255).astype(int).ravel().tolist()
    assert out.max() == 255 and 0 < out.mean() < 255  # scaled, not clipped to white


def _seg(root: Path, mask: np.ndarray, img: np.ndarray = RGB) -> Path:
    _png(root / "images" / "a.png", img)
    _png(root / "masks" / "a.png", mask)
    return root


def test_masks_of_the_wrong_size_wrong_values_or_colour(tmp_path: Path) -> None:
    root = _seg(tmp_path / "size", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"masks/a.png: mask size 16x16 differs from image a.png 32x32"):
        SegmentationFolderDataset(root, num_classes=3)
    root = _seg(tmp_path / "vals", np.full((32, 32), 9, np.uint8))
    with pytest.raises(DataError, match=r"vals/masks/a.png: mask label 9 >= num_classes=3 \(ignore_index=255\)"):
        SegmentationFolderDataset(root, num_classes=3, validate="full")
    root = _seg(tmp_path / "colour", RGB)
    with pytest.raises(DataError, match=r"colour/masks/a.png: colour mask; masks must hold class indices"):
        SegmentationFolderDataset(root, num_classes=3, validate="full")
    root = _seg(tmp_path / "missing", np.zeros((32, 32), np.uint8))
    (root / "masks" / "a.png").rename(root / "masks" / "b.png")
    with pytest.raises(DataError, match=r"images/a.png: no file with stem 'a' in .*masks"):
        SegmentationFolderDataset(root)


def test_change_detection_dates_of_different_sizes(tmp_path: Path) -> None:
    _png(tmp_path / "A" / "x.png", RGB)
    _png(tmp_path / "B" / "x.png", RGB[:16, :16])
    _png(tmp_path / "label" / "x.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"B/x.png: size \(16, 16\) differs from x.png \(32, 32\)"):
        ChangeDetectionDataset(tmp_path)


def _coco(tmp_path: Path, bbox: list[float], cat: int = 1, size: tuple[int, int] = (32, 32)) -> Path:
    _png(tmp_path / "img" / "a.png", RGB)
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": cat, "bbox": bbox, "iscrowd": 0}],
           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return path


@pytest.mark.parametrize(
    "bbox, cat, size, match",
    [
        ([20, 4, 20, 8], 1, (32, 32), r"a.png: box \[20, 4, 20, 8\] \(annotation 5\) outside the 32x32 image"),
        ([20, 4, -8, 8], 1, (32, 32), r"a.png: box \[20, 4, -8, 8\] \(annotation 5\) outside .* or empty"),  # x2<x1
        ([2, 2, 8, 8], 7, (32, 32), r"a.png: category 7 \(annotation 5\) gives label -1, not in \[0, 2\)"),
        ([2, 2, 8, 8], 1, (64, 48), r"a.png: json says 64x48, the file is 32x32"),
    ],
    ids=["box-outside", "x2-before-x1", "unknown-category", "size-mismatch"],
)
def test_coco_annotations_that_do_not_fit_their_image(tmp_path: Path, bbox, cat, size, match: str) -> None:
    with pytest.raises(DataError, match=match):
        CocoDetectionDataset(_coco(tmp_path, bbox, cat, size), tmp_path / "img")


def test_unreadable_annotation_and_list_files(tmp_path: Path) -> None:
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"ann.json: not a readable COCO json"):
        CocoDetectionDataset(bad, tmp_path)
    _png(tmp_path / "a.png", RGB)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\na.png,7\n")
    with pytest.raises(DataError, match=r"list.csv:2 \(.*a.png\): label '7' not in \[0, 3\)"):
        CsvImageDataset(csv, num_classes=3)
    csv.write_text("file,class\na.png,0\n")
    with pytest.raises(DataError, match=r"list.csv: needs columns 'path' and 'label', has \['file', 'class'\]"):
        CsvImageDataset(csv)
    with pytest.raises(DataError, match=r"nowhere: dataset folder not found"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_a_corrupt_file_found_late_still_names_itself(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "ok.png", RGB)
    _truncated(tmp_path / "a" / "cut.png", "PNG")
    ds = ImageFolderDataset(tmp_path)  # the header check passes: the damage is in the pixel data
    with pytest.raises(DataError, match=r"a/cut.png: unreadable or corrupt image"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(DataError, match=r"a/cut.png: unreadable .* \(pass skip_bad=True to leave such samples out\)"):
        ImageFolderDataset(tmp_path, validate="full")
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample\(s\); first: .*a/cut.png: unreadable"):
        assert len(ImageFolderDataset(tmp_path, validate="full", skip_bad=True)) == 1
