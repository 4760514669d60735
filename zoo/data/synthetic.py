"""Deterministic tiny synthetic datasets in every on-disk format LightZoo reads, for tests and demos.

Scenes are coloured shapes on a noisy background: class ``c`` is drawn as shape ``c % 3`` (rectangle, ellipse,
triangle) in colour ``PALETTE[c]``, so both shape and colour carry the class and a small network learns it in a
few steps. Each object has an exact box (the tight box of its pixels) and a mask; change pairs are a scene and
the same scene under a global brightness change with one to two objects painted in (the change mask is exactly the
painted pixels). Everything depends only on ``seed`` and the sample index (``numpy.random.default_rng``), so the
same command produces the same bytes on every machine.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

PALETTE = np.array([(230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 200, 30), (200, 60, 220), (30, 210, 220),
                    (250, 130, 20), (140, 90, 40)], dtype=np.uint8)
SHAPES = ("rectangle", "ellipse", "triangle")
MAX_CLASSES = len(PALETTE)


def _shape_mask(kind: int, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 0:
        m = (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
    elif kind == 1:
        cx, cy, rx, ry = (x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    else:  # isosceles triangle, apex at the top centre, base on the bottom row of the box
        cx = (x1 + x2 - 1) / 2
        t = (yy - y1 + 1) / max(y2 - y1, 1)  # 0 at the apex row, 1 at the base
        m = (yy >= y1) & (yy < y2) & (np.abs(xx - cx) <= t * (x2 - x1) / 2)
    return m


def _tight_box(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(60, 110, size=3)
    noise = rng.integers(-12, 13, size=(size, size, 3))
    return np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, occupied: np.ndarray, cls: int,
           min_frac: float = 0.2, max_frac: float = 0.45) -> list[float] | None:
    """Paint one object of class ``cls`` where nothing is yet; returns its tight box, or None if it did not fit."""
    size = image.shape[0]
    for _ in range(20):
        w = int(rng.integers(int(min_frac * size), int(max_frac * size) + 1))
        h = int(rng.integers(int(min_frac * size), int(max_frac * size) + 1))
        x1 = int(rng.integers(0, size - w + 1))
        y1 = int(rng.integers(0, size - h + 1))
        m = _shape_mask(cls % len(SHAPES), size, (x1, y1, x1 + w, y1 + h))
        if m.sum() >= 4 and not (m & occupied).any():
            shade = np.clip(PALETTE[cls].astype(int) + rng.integers(-15, 16, size=3), 0, 255)
            image[m] = shade.astype(np.uint8)
            mask[m] = cls + 1
            occupied |= m
            return _tight_box(m)
    return None


def shapes_scene(rng: np.random.Generator, size: int = 64, num_classes: int = 3, max_objects: int = 3
                 ) -> dict[str, np.ndarray]:
    """One scene: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 with 0 = background and ``c + 1`` = class c,
    ``boxes`` (K, 4) xyxy float32 and ``labels`` (K,) int64 in ``[0, num_classes)``."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"synthetic scenes have 1..{MAX_CLASSES} object classes, got {num_classes}")
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    occupied = np.zeros((size, size), bool)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, num_classes))
        box = _paint(rng, image, mask, occupied, cls)
        if box is not None:
            boxes.append(box)
            labels.append(cls)
    return {"image": image, "mask": mask, "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int64)}


def classification_sample(rng: np.random.Generator, size: int = 64, num_classes: int = 3) -> tuple[np.ndarray, int]:
    """An image with one large object of a random class, and that class."""
    image = _background(rng, size)
    cls = int(rng.integers(0, num_classes))
    _paint(rng, image, np.zeros((size, size), np.uint8), np.zeros((size, size), bool), cls, 0.4, 0.7)
    return image, cls


def change_pair(rng: np.random.Generator, size: int = 64, num_classes: int = 3) -> dict[str, np.ndarray]:
    """``image_a``, ``image_b`` (H, W, 3) uint8 and ``mask`` (H, W) uint8, 1 where an object was painted into B."""
    scene = shapes_scene(rng, size, num_classes, max_objects=2)
    a = scene["image"]
    b = np.clip(a.astype(int) + int(rng.integers(-20, 21)), 0, 255).astype(np.uint8)  # seasonal/illumination shift
    occupied = scene["mask"] > 0
    change = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        _paint(rng, b, change, occupied, int(rng.integers(0, num_classes)))
    return {"image_a": a, "image_b": b, "mask": (change > 0).astype(np.uint8)}


# ------------------------------------------------------------------------------------------- per-task formats
Tensorise = Callable[..., Any]  # (H, W, 3) uint8 image -> (3, H, W) float tensor (normalised unless told not to)
Splits = Sequence[tuple[str, int]]  # (split name, sample index) in generation order


def classification_batch(rng: np.random.Generator, n: int, size: int, num_classes: int, tensor: Tensorise
                         ) -> dict[str, Any]:
    import torch

    samples = [classification_sample(rng, size, num_classes) for _ in range(n)]
    return {"images": torch.stack([tensor(i) for i, _ in samples]), "targets": torch.tensor([c for _, c in samples])}


def detection_batch(rng: np.random.Generator, n: int, size: int, num_classes: int, tensor: Tensorise
                    ) -> dict[str, Any]:
    import torch

    scenes = [shapes_scene(rng, size, num_classes) for _ in range(n)]
    return {"images": [tensor(s["image"], normalise=False) for s in scenes],
            "targets": [{"boxes": torch.from_numpy(s["boxes"]), "labels": torch.from_numpy(s["labels"])}
                        for s in scenes]}


def segmentation_batch(rng: np.random.Generator, n: int, size: int, num_classes: int, tensor: Tensorise
                       ) -> dict[str, Any]:
    import torch

    scenes = [shapes_scene(rng, size, num_classes - 1) for _ in range(n)]
    return {"images": torch.stack([tensor(s["image"]) for s in scenes]),
            "targets": torch.stack([torch.from_numpy(s["mask"]).long() for s in scenes])}


def change_batch(rng: np.random.Generator, n: int, size: int, num_classes: int, tensor: Tensorise
                 ) -> dict[str, Any]:
    import torch

    pairs = [change_pair(rng, size) for _ in range(n)]
    return {"image_a": torch.stack([tensor(p["image_a"]) for p in pairs]),
            "image_b": torch.stack([tensor(p["image_b"]) for p in pairs]),
            "targets": torch.stack([torch.from_numpy(p["mask"]).long() for p in pairs])}


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_classification(out: Path, rng: np.random.Generator, splits: Splits, size: int, classes: list[str],
                         meta: dict[str, Any]) -> None:
    """``train/<class>/xxxx.png`` and ``val/...`` image folders, plus ``train.csv`` / ``val.csv`` lists."""
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for split in rows:  # every class folder in every split, so class indices agree between splits
        for name in classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    for split, i in splits:
        img, c = classification_sample(rng, size, len(classes))
        rel = f"{split}/{classes[c]}/{i:04d}.png"
        _save_png(out / rel, img)
        rows[split].append((rel, c))
    for split, items in rows.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(items)


def write_detection(out: Path, rng: np.random.Generator, splits: Splits, size: int, classes: list[str],
                    meta: dict[str, Any]) -> None:
    """``images/xxxx.png`` with COCO files ``annotations/instances_{train,val}.json``."""
    cocos = {s: {"images": [], "annotations": [],
                 "categories": [{"id": c, "name": name} for c, name in enumerate(classes)]}
             for s in ("train", "val")}
    for split, i in splits:
        sc = shapes_scene(rng, size, len(classes))
        _save_png(out / "images" / f"{i:04d}.png", sc["image"])
        coco = cocos[split]
        coco["images"].append({"id": i, "file_name": f"{i:04d}.png", "width": size, "height": size})
        for b, lab in zip(sc["boxes"], sc["labels"]):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i,
                                        "category_id": int(lab), "bbox": [float(b[0]), float(b[1]), w, h],
                                        "area": w * h, "iscrowd": 0})
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, coco in cocos.items():
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def write_segmentation(out: Path, rng: np.random.Generator, splits: Splits, size: int, classes: list[str],
                       meta: dict[str, Any]) -> None:
    """``{train,val}/images/xxxx.png`` + ``{train,val}/masks/xxxx.png`` (same stems; 0 = background, ``c + 1`` =
    shape class c, so one more segmentation class than shape classes)."""
    meta["classes"] = ["background", *classes]
    for split, i in splits:
        sc = shapes_scene(rng, size, len(classes))
        _save_png(out / split / "images" / f"{i:04d}.png", sc["image"])
        _save_png(out / split / "masks" / f"{i:04d}.png", sc["mask"])


def write_change(out: Path, rng: np.random.Generator, splits: Splits, size: int, classes: list[str],
                 meta: dict[str, Any]) -> None:
    """LEVIR-CD layout ``{train,val}/A``, ``/B``, ``/label`` (labels 0 / 255 like LEVIR-CD)."""
    meta["classes"] = ["unchanged", "changed"]
    for split, i in splits:
        p = change_pair(rng, size, len(classes))
        _save_png(out / split / "A" / f"{i:04d}.png", p["image_a"])
        _save_png(out / split / "B" / f"{i:04d}.png", p["image_b"])
        _save_png(out / split / "label" / f"{i:04d}.png", p["mask"] * 255)


@dataclass(frozen=True)
class SyntheticFormat:
    """How a task's synthetic shapes data is made. Each task class (:mod:`zoo.heads`) names its format as its
    ``synthetic`` attribute, so a new task brings its own generator without an edit here."""

    batch: Callable[[np.random.Generator, int, int, int, Tensorise], dict[str, Any]]
    write: Callable[[Path, np.random.Generator, Splits, int, list[str], dict[str, Any]], None]


CLASSIFICATION = SyntheticFormat(classification_batch, write_classification)
DETECTION = SyntheticFormat(detection_batch, write_detection)
SEGMENTATION = SyntheticFormat(segmentation_batch, write_segmentation)
CHANGE_DETECTION = SyntheticFormat(change_batch, write_change)


def _format(task: str) -> SyntheticFormat:
    from ..heads import get_task

    fmt = get_task(task).synthetic
    if fmt is None:
        raise ConfigError(f"task {task!r} has no synthetic data generator")
    return fmt


# ----------------------------------------------------------------------------------------- in-memory batches
def synthetic_batch(task: str, batch_size: int = 2, size: int = 64, num_classes: int = 3, seed: int = 0
                    ) -> dict[str, Any]:
    """A model-ready batch for ``task`` (tests, smoke runs). Dense tasks get ImageNet-normalised tensors,
    detection gets ``[0, 1]`` images (torchvision normalises inside), matching each task model's contract.

    Keys: classification ``images``, ``targets`` (N,); detection ``images`` (list), ``targets`` (list of dicts);
    segmentation ``images``, ``targets`` (N, H, W) with ``num_classes`` = shape classes + background;
    change_detection ``image_a``, ``image_b``, ``targets`` (N, H, W) in {0, 1}.
    """
    import torch

    fmt = _format(task)
    rng = np.random.default_rng(seed)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def tensor(img: np.ndarray, normalise: bool = True) -> torch.Tensor:
        t = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        return (t - mean) / std if normalise else t

    return fmt.batch(rng, batch_size, size, num_classes, tensor)


# ----------------------------------------------------------------------------------------------- on-disk sets
def write_synthetic(task: str, out: str | Path, n: int = 24, size: int = 64, num_classes: int = 3, seed: int = 0,
                    val_fraction: float = 0.25) -> Path:
    """Write a synthetic dataset for ``task`` under ``out`` in the format the task's loader reads (the task's
    ``synthetic.write`` says which: image folders + CSV lists, COCO, image/mask folders, LEVIR-CD), with a
    ``synthetic.json`` describing it."""
    fmt = _format(task)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"synthetic scenes have 1..{MAX_CLASSES} object classes, got {num_classes}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(n * val_fraction)))
    splits = [("train", i) for i in range(n - n_val)] + [("val", i) for i in range(n - n_val, n)]
    classes = [f"{c}_{SHAPES[c % 3]}" for c in range(num_classes)]  # names sort in index order
    meta: dict[str, Any] = {"task": task, "n": n, "size": size, "seed": seed, "classes": classes}
    fmt.write(out, rng, splits, size, classes, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.json").write_text(json.dumps(meta, indent=1))
    return out
