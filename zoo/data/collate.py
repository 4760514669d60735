"""Collate functions: a list of dataset samples -> the batch dict each task model's call takes.

The batch keys match :func:`zoo.data.synthetic.synthetic_batch`, so a trainer has one code path:
classification / segmentation ``{"images": (N, 3, H, W), "targets": ...}``; detection ``{"images": [(3, H, W)],
"targets": [{"boxes", "labels", "image_id"}]}`` (lists: images may differ in size, torchvision batches them);
change detection ``{"image_a", "image_b", "targets"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError


def collate_classification(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"images": torch.stack([s["image"] for s in samples]),
            "targets": torch.as_tensor([s["target"] for s in samples], dtype=torch.long)}


def collate_detection(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {"images": [s["image"] for s in samples], "targets": [s["target"] for s in samples]}


def collate_segmentation(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"images": torch.stack([s["image"] for s in samples]),
            "targets": torch.stack([s["target"] for s in samples])}


def collate_change(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"image_a": torch.stack([s["image_a"] for s in samples]),
            "image_b": torch.stack([s["image_b"] for s in samples]),
            "targets": torch.stack([s["target"] for s in samples])}


def collate_fn(task: str) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """The collate function for ``task`` (pass it to ``torch.utils.data.DataLoader``): the one its task class
    (:mod:`zoo.heads`) names as ``collate``."""
    from ..heads import get_task

    fn = get_task(task).collate
    if fn is None:
        raise ConfigError(f"task {task!r} names no collate function")
    return fn
