"""Metrics for the four tasks, as plain functions plus small accumulators for whole-dataset evaluation.

Why accumulators: mIoU, Dice and change F1 must be computed from a confusion matrix summed over the *whole*
dataset, not averaged per batch (a per-batch mean over-weights small batches and images without a class).
COCO mAP goes through pycocotools so the numbers are the ones papers report.

Conventions
- Classification accuracies are fractions in ``[0, 1]`` (not percent).
- ``confusion_matrix(pred, target)`` has rows = ground truth, columns = prediction.
- A class that occurs neither in the ground truth nor in the predictions has IoU/Dice ``nan``; means ignore it
  (``nanmean``), as mmseg does, so a class missing from a small validation set does not count as 0.
- Pixels whose target equals ``ignore_index`` are excluded everywhere.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import DataError

__all__ = [
    "ChangeMeter",
    "CocoEvaluator",
    "ConfusionMeter",
    "accuracy",
    "change_metrics",
    "coco_map",
    "confusion_matrix",
    "segmentation_metrics",
    "topk_accuracy",
]


# ----------------------------------------------------------------------------------------------- classification
def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies as fractions, keyed ``top1``, ``top5``, ...; ``k`` is clipped to the number of classes.

    ``target`` may be class indices ``(N,)`` or soft/one-hot targets ``(N, C)`` (mixup), in which case the
    argmax is the reference class.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if target.ndim == 2:
        target = target.argmax(dim=1)
    n, c = logits.shape
    if n == 0:
        return {f"top{k}": float("nan") for k in topk}
    maxk = min(max(topk), c)
    pred = logits.topk(maxk, dim=1).indices  # (N, maxk)
    hit = pred.eq(target.view(-1, 1))
    return {f"top{k}": hit[:, : min(k, c)].any(dim=1).float().mean().item() for k in topk}


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """Like timm's ``accuracy`` but returns fractions: one value per ``k`` in ``topk``."""
    res = topk_accuracy(logits, target, topk)
    return [res[f"top{k}"] for k in topk]


# -------------------------------------------------------------------------------------- segmentation and change
def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts, rows = ground truth, columns = prediction.

    ``pred`` holds class indices (take ``logits.argmax(1)`` first). Target values outside ``[0, num_classes)``
    other than ``ignore_index`` are a data bug and raise ``DataError`` instead of being silently dropped.
    """
    p = torch.as_tensor(pred).reshape(-1).long().cpu()
    t = torch.as_tensor(target).reshape(-1).long().cpu()
    if p.shape != t.shape:
        raise ValueError(f"prediction and target differ in size: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise DataError(f"target contains label {int(t.max())} outside [0, {num_classes}) (ignore_index="
                        f"{ignore_index}); check num_classes or the masks")
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction contains class {int(p.max())} outside [0, {num_classes})")
    cm = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).numpy().astype(np.int64)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


def segmentation_metrics(cm: np.ndarray) -> dict[str, Any]:
    """mIoU, mean Dice, pixel accuracy, mean class accuracy and per-class IoU/Dice from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    iou = _safe_div(tp, gt + pr - tp)
    dice = _safe_div(2 * tp, gt + pr)
    cls_acc = _safe_div(tp, gt)
    total = cm.sum()
    return {
        "miou": _nanmean(iou),
        "mdice": _nanmean(dice),
        "pixel_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_acc": _nanmean(cls_acc),
        "per_class_iou": [float(v) for v in iou],
        "per_class_dice": [float(v) for v in dice],
    }


def _nanmean(v: np.ndarray) -> float:
    """Mean over the defined entries; ``nan`` (without numpy's warning) when none is defined."""
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def change_metrics(cm: np.ndarray, change_class: int = 1) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the change class, overall accuracy and Cohen's kappa.

    For a multi-class change map the "change" scores are for ``change_class``; OA and kappa use all classes.
    Undefined ratios (no predicted or no true change) are ``nan``, never a flattering 1.0 or 0.0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = cm[change_class, change_class]
    fp = cm[:, change_class].sum() - tp
    fn = cm[change_class, :].sum() - tp
    precision = tp / (tp + fp) if tp + fp > 0 else float("nan")
    recall = tp / (tp + fn) if tp + fn > 0 else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn > 0 else float("nan")
    iou = tp / (tp + fp + fn) if tp + fp + fn > 0 else float("nan")
    oa = np.trace(cm) / total if total else float("nan")
    pe = float((cm.sum(axis=0) * cm.sum(axis=1)).sum() / (total * total)) if total else float("nan")
    kappa = (oa - pe) / (1 - pe) if total and pe != 1 else float("nan")
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "iou": float(iou),
            "oa": float(oa), "kappa": float(kappa)}


class ConfusionMeter:
    """Accumulates a confusion matrix over batches; ``compute()`` gives ``segmentation_metrics``.

    ``update`` takes logits ``(N, C, H, W)`` or class maps ``(N, H, W)`` and targets ``(N, H, W)``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.cm[:] = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(dim=1)
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> dict[str, Any]:
        return segmentation_metrics(self.cm)


class ChangeMeter(ConfusionMeter):
    """``ConfusionMeter`` whose ``compute()`` reports ``change_metrics`` (plus mIoU over all classes)."""

    def __init__(self, num_classes: int = 2, ignore_index: int | None = 255, change_class: int = 1) -> None:
        super().__init__(num_classes, ignore_index)
        self.change_class = change_class

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = change_metrics(self.cm, self.change_class)
        out["miou"] = segmentation_metrics(self.cm)["miou"]
        return out


# --------------------------------------------------------------------------------------------------- detection
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class CocoEvaluator:
    """COCO box mAP through pycocotools, fed with torchvision-format predictions and targets.

    ``update(predictions, targets)`` takes lists of dicts: predictions with ``boxes`` (xyxy, pixels), ``scores``,
    ``labels``; targets with ``boxes`` and ``labels`` and optionally ``iscrowd`` / ``area``. Images are numbered
    in the order they arrive, so no image ids need to travel through the data loader.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self._images: list[dict[str, Any]] = []
        self._gts: list[dict[str, Any]] = []
        self._dets: list[dict[str, Any]] = []

    def update(self, predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]]) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        for pred, tgt in zip(predictions, targets):
            img_id = len(self._images) + 1
            self._images.append({"id": img_id})
            boxes = _to_numpy(tgt["boxes"]).reshape(-1, 4).astype(float)
            labels = _to_numpy(tgt["labels"]).reshape(-1).astype(int)
            crowd = _to_numpy(tgt.get("iscrowd", np.zeros(len(labels)))).reshape(-1).astype(int)
            for b, lab, c in zip(boxes, labels, crowd):
                w, h = b[2] - b[0], b[3] - b[1]
                self._gts.append({"id": len(self._gts) + 1, "image_id": img_id, "category_id": int(lab),
                                  "bbox": [float(b[0]), float(b[1]), float(w), float(h)],
                                  "area": float(w * h), "iscrowd": int(c)})
            pb = _to_numpy(pred["boxes"]).reshape(-1, 4).astype(float)
            for b, s, lab in zip(pb, _to_numpy(pred["scores"]).reshape(-1), _to_numpy(pred["labels"]).reshape(-1)):
                self._dets.append({"image_id": img_id, "category_id": int(lab),
                                   "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                   "score": float(s)})

    def compute(self) -> dict[str, float]:
        """``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``map_small/medium/large``, ``mar100``."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        cat_ids = sorted({a["category_id"] for a in self._gts} | {d["category_id"] for d in self._dets})
        if self.num_classes is not None:
            cat_ids = sorted(set(cat_ids) | set(range(self.num_classes)))
        keys = ("map", "map50", "map75", "map_small", "map_medium", "map_large")
        if not self._gts:
            return {k: float("nan") for k in (*keys, "mar100")}
        gt = COCO()
        gt.dataset = {"images": self._images, "annotations": self._gts,
                      "categories": [{"id": c, "name": str(c)} for c in cat_ids]}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt = gt.loadRes(self._dets) if self._dets else COCO()
            if not self._dets:
                return {**{k: 0.0 for k in keys}, "mar100": 0.0}
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = ev.stats
        # pycocotools reports -1 for an area range without ground truth: that is "undefined", not a score.
        vals = [float("nan") if v < 0 else float(v) for v in s]
        return dict(zip(keys, vals[:6])) | {"mar100": vals[8]}


def coco_map(predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]],
             num_classes: int | None = None) -> dict[str, float]:
    """One-shot COCO mAP for lists of torchvision-format prediction and target dicts."""
    ev = CocoEvaluator(num_classes)
    ev.update(predictions, targets)
    return ev.compute()
