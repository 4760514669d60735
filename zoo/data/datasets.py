"""Datasets for the four tasks in the common on-disk formats, checked before training starts.

Every dataset scans its index when it is built: unreadable images, masks whose size differs from their image,
boxes outside the image, labels ``>= num_classes`` are each a ``DataError`` that names the file. With
``skip_bad=True`` such samples are left out instead, with one warning that counts them; ``dataset.skipped`` lists
``(path, reason)``. ``validate="full"`` also decodes every image and mask at build time (slower, catches truncated
files and out-of-range mask labels up front); with the default ``"header"`` those are found when the sample is
loaded, and raise ``DataError`` then.

Samples are dicts; :mod:`zoo.data.collate` turns a list of them into the batch the task model takes.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .io import IMAGE_EXTENSIONS, image_size, list_images, read_image, read_mask

Transform = Callable[..., dict[str, Any]]


class _Checked(Dataset):
    """Shared bookkeeping: collect bad samples, then raise on the first or warn with a count."""

    def __init__(self, skip_bad: bool, validate: str) -> None:
        if validate not in ("header", "full"):
            raise DataError(f"validate must be 'header' or 'full', got {validate!r}")
        self.skip_bad = skip_bad
        self.validate = validate
        self.skipped: list[tuple[str, str]] = []

    def _bad(self, path: str | Path, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{path}: {reason} (pass skip_bad=True to leave such samples out)")
        self.skipped.append((str(path), reason))

    def _report(self, name: str) -> None:
        if self.skipped:
            p, r = self.skipped[0]
            warnings.warn(f"{name}: skipped {len(self.skipped)} bad sample(s); first: {p}: {r}", stacklevel=3)

    def _check_image(self, path: Path) -> tuple[int, int] | None:
        try:
            size = image_size(path)
            if self.validate == "full":
                read_image(path)
            return size
        except DataError as e:
            self._bad(path, str(e).split(": ", 1)[-1])
            return None


def _check_mask_values(mask: np.ndarray, path: Path, num_classes: int | None, ignore_index: int) -> None:
    if num_classes is None:
        return
    vals = np.unique(mask)
    bad = vals[(vals >= num_classes) & (vals != ignore_index)]
    if bad.size:
        raise DataError(f"{path}: mask label {int(bad[0])} >= num_classes={num_classes} "
                        f"(ignore_index={ignore_index})")


# ------------------------------------------------------------------------------------------ classification
class ImageFolderDataset(_Checked):
    """``root/<class name>/<image>``; classes are the sorted sub-folder names (or ``classes`` if given).

    Samples: ``{"image": (3, H, W) float tensor, "target": int}``.
    """

    def __init__(self, root: str | Path, transform: Transform | None = None, classes: Sequence[str] | None = None,
                 skip_bad: bool = False, validate: str = "header") -> None:
        super().__init__(skip_bad, validate)
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        self.classes = list(classes) if classes else sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = []
        for idx, name in enumerate(self.classes):
            for p in list_images(root / name):
                if self._check_image(p) is not None:
                    self.samples.append((p, idx))
        self._report(str(root))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        return {"image": _to_tensor(self.transform, image=read_image(path))["image"], "target": label}


class CsvImageDataset(ImageFolderDataset):
    """A CSV list ``path,label`` (header row; paths relative to ``root`` or the CSV's folder; label a class name
    or an integer index). Integer labels must be ``< num_classes`` (or ``len(classes)``)."""

    def __init__(self, csv_file: str | Path, root: str | Path | None = None, transform: Transform | None = None,
                 classes: Sequence[str] | None = None, num_classes: int | None = None, skip_bad: bool = False,
                 validate: str = "header") -> None:
        _Checked.__init__(self, skip_bad, validate)
        csv_file = Path(csv_file)
        root = Path(root) if root else csv_file.parent
        try:
            with open(csv_file, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise DataError(f"{csv_file}: cannot read ({e})") from e
        if rows and not {"path", "label"} <= set(rows[0]):
            raise DataError(f"{csv_file}: needs columns 'path' and 'label', has {list(rows[0])}")
        labels = [r["label"] for r in rows]
        numeric = all(lab.strip().lstrip("-").isdigit() for lab in labels)
        self.classes = list(classes) if classes else (
            [str(i) for i in range(num_classes or (max(map(int, labels)) + 1 if labels else 0))] if numeric
            else sorted(set(labels)))
        n_cls = num_classes or len(self.classes)
        self.samples = []
        for line, r in enumerate(rows, start=2):
            p = root / r["path"]
            lab = int(r["label"]) if numeric else (self.classes.index(r["label"]) if r["label"] in self.classes
                                                   else -1)
            if not 0 <= lab < n_cls:
                self._bad(f"{csv_file}:{line} ({p})", f"label {r['label']!r} not in [0, {n_cls}) / known classes")
                continue
            if self._check_image(p) is not None:
                self.samples.append((p, lab))
        self._report(str(csv_file))
        self.transform = transform


# ----------------------------------------------------------------------------------------------- detection
class CocoDetectionDataset(_Checked):
    """COCO ``instances_*.json`` + image folder. Category ids (any, e.g. COCO's 1..90 with gaps) are mapped to
    contiguous labels ``0..K-1`` in id order; ``classes`` holds their names and ``cat_ids`` the original ids.

    Samples: ``{"image": (3, H, W) float in [0, 1], "target": {"boxes": (K, 4) xyxy, "labels": (K,),
    "image_id": int}}``. Crowd annotations are left out of training targets (torchvision cannot use them).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transform: Transform | None = None,
                 num_classes: int | None = None, skip_bad: bool = False, validate: str = "header") -> None:
        super().__init__(skip_bad, validate)
        ann_file, image_dir = Path(ann_file), Path(image_dir)
        try:
            coco = json.loads(ann_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{ann_file}: not a readable COCO json ({e})") from e
        self.cat_ids = sorted(c["id"] for c in coco.get("categories", []))
        names = {c["id"]: c.get("name", str(c["id"])) for c in coco.get("categories", [])}
        self.classes = [names[c] for c in self.cat_ids]
        self.num_classes = num_classes if num_classes is not None else len(self.cat_ids)
        cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        anns: dict[int, list[dict[str, Any]]] = {}
        for a in coco.get("annotations", []):
            anns.setdefault(a["image_id"], []).append(a)
        self.samples: list[tuple[Path, int, np.ndarray, np.ndarray]] = []
        for img in coco.get("images", []):
            path = image_dir / img["file_name"]
            size = self._check_image(path)
            if size is None:
                continue
            w, h = size
            if (img.get("width"), img.get("height")) not in ((None, None), (w, h)):
                self._bad(path, f"json says {img.get('width')}x{img.get('height')}, the file is {w}x{h}")
                continue
            boxes, labels, problem = [], [], None
            for a in anns.get(img["id"], []):
                if a.get("iscrowd", 0):
                    continue
                x, y, bw, bh = (float(v) for v in a["bbox"])
                eps = 1e-3
                if bw <= 0 or bh <= 0 or x < -eps or y < -eps or x + bw > w + eps or y + bh > h + eps:
                    problem = f"box {a['bbox']} (annotation {a.get('id')}) outside the {w}x{h} image or empty"
                    break
                lab = cat_to_label.get(a["category_id"], -1)
                if not 0 <= lab < self.num_classes:
                    problem = (f"category {a['category_id']} (annotation {a.get('id')}) gives label {lab}, not in "
                               f"[0, {self.num_classes})")
                    break
                boxes.append([max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)])
                labels.append(lab)
            if problem:
                self._bad(path, problem)
                continue
            self.samples.append((path, int(img["id"]), np.array(boxes, np.float32).reshape(-1, 4),
                                 np.array(labels, np.int64)))
        self._report(str(ann_file))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, image_id, boxes, labels = self.samples[i]
        out = _to_tensor(self.transform, image=read_image(path), bboxes=boxes, labels=labels)
        b = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        return {"image": out["image"], "target": {"boxes": b, "labels": torch.as_tensor(np.asarray(
            out["labels"], np.int64).reshape(-1)), "image_id": image_id}}


# -------------------------------------------------------------------------------------------- segmentation
def _paired(folders: Sequence[Path], main: Path) -> list[tuple[Path, ...]]:
    """Files in ``main`` matched by stem to one file in each of ``folders`` (missing -> DataError)."""
    out = []
    index = []
    for f in folders:
        if not f.is_dir():
            raise DataError(f"{f}: folder not found")
        index.append({p.stem: p for p in f.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS})
    for p in list_images(main):
        row = [p]
        for f, idx in zip(folders, index):
            if p.stem not in idx:
                raise DataError(f"{p}: no file with stem {p.stem!r} in {f}")
            row.append(idx[p.stem])
        out.append(tuple(row))
    return out


class SegmentationFolderDataset(_Checked):
    """``root/<image_dir>/x.jpg`` + ``root/<mask_dir>/x.png`` (same stems); masks hold class indices, with
    ``ignore_index`` (255) for unlabelled pixels. Samples: ``{"image": (3, H, W), "target": (H, W) int64}``."""

    def __init__(self, root: str | Path, transform: Transform | None = None, num_classes: int | None = None,
                 image_dir: str = "images", mask_dir: str = "masks", ignore_index: int = 255,
                 skip_bad: bool = False, validate: str = "header") -> None:
        super().__init__(skip_bad, validate)
        root = Path(root)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.samples: list[tuple[Path, Path]] = []
        for img, mask in _paired([root / mask_dir], root / image_dir):
            if self._check_pair([img], mask):
                self.samples.append((img, mask))
        self._report(str(root))
        self.transform = transform

    def _check_pair(self, images: Sequence[Path], mask: Path) -> bool:
        sizes = [self._check_image(p) for p in images]
        if any(s is None for s in sizes):
            return False
        try:
            msize = image_size(mask)
        except DataError as e:
            self._bad(mask, str(e).split(": ", 1)[-1])
            return False
        if len(set(sizes)) > 1:
            self._bad(images[1], f"size {sizes[1]} differs from {images[0].name} {sizes[0]}")
            return False
        if msize != sizes[0]:
            self._bad(mask, f"mask size {msize[0]}x{msize[1]} differs from image {images[0].name} "
                            f"{sizes[0][0]}x{sizes[0][1]}")
            return False
        if self.validate == "full":
            try:
                _check_mask_values(self._load_mask(mask), mask, self.num_classes, self.ignore_index)
            except DataError as e:
                self._bad(mask, str(e).split(": ", 1)[-1])
                return False
        return True

    def _load_mask(self, path: Path) -> np.ndarray:
        return read_mask(path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, mask_path = self.samples[i]
        mask = self._load_mask(mask_path)
        _check_mask_values(mask, mask_path, self.num_classes, self.ignore_index)
        out = _to_tensor(self.transform, image=read_image(img), mask=mask)
        return {"image": out["image"], "target": torch.as_tensor(np.asarray(out["mask"])).long()}


class ChangeDetectionDataset(SegmentationFolderDataset):
    """LEVIR-CD layout: ``root/A/x.png``, ``root/B/x.png``, ``root/label/x.png``. With ``binary=True`` (LEVIR-CD's
    0/255 labels) any non-zero label is "change" (1); otherwise labels are class indices (semantic change).

    Samples: ``{"image_a": (3, H, W), "image_b": (3, H, W), "target": (H, W) int64}``; the transform must declare
    ``additional_targets={"image_b": "image"}`` so both dates get the same geometry (the defaults do).
    """

    def __init__(self, root: str | Path, transform: Transform | None = None, binary: bool = True,
                 num_classes: int | None = None, a_dir: str = "A", b_dir: str = "B", label_dir: str = "label",
                 ignore_index: int = 255, skip_bad: bool = False, validate: str = "header") -> None:
        _Checked.__init__(self, skip_bad, validate)
        root = Path(root)
        self.binary = binary
        self.num_classes = 2 if binary else num_classes
        self.ignore_index = ignore_index
        self.samples = []
        for a, b, lab in _paired([root / b_dir, root / label_dir], root / a_dir):
            if self._check_pair([a, b], lab):
                self.samples.append((a, b, lab))
        self._report(str(root))
        self.transform = transform

    def _load_mask(self, path: Path) -> np.ndarray:
        m = read_mask(path)
        return (m > 0).astype(np.uint8) if self.binary else m

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b, lab_path = self.samples[i]
        mask = self._load_mask(lab_path)
        _check_mask_values(mask, lab_path, self.num_classes, self.ignore_index)
        out = _to_tensor(self.transform, image=read_image(a), image_b=read_image(b), mask=mask)
        return {"image_a": out["image"], "image_b": out["image_b"],
                "target": torch.as_tensor(np.asarray(out["mask"])).long()}


def _to_tensor(transform: Transform | None, **data: Any) -> dict[str, Any]:
    """Apply ``transform`` (albumentations-style keyword call); without one, just HWC uint8 -> CHW float."""
    if transform is not None:
        return transform(**data)
    out = dict(data)
    for k in ("image", "image_b"):
        if k in out:
            out[k] = torch.from_numpy(np.array(out[k], copy=True)).permute(2, 0, 1).float() / 255.0
    return out
