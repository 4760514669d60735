"""Task heads on any backbone: classification, detection, segmentation, change detection.

``zoo.create_model(backbone, task=..., head=..., num_classes=...)`` calls :func:`build_task_model`. Tasks and heads
live in one registry (:mod:`zoo.heads.registry`); every task model is a :class:`~zoo.heads.base.TaskModel` that
knows its task, head, input, data config, export adapter and post-processing, so the trainer, the exporter and
``zoo predict`` ask the model instead of comparing names. The common contract:

- ``train()`` mode with targets -> a dict of scalar losses (sum them to back-propagate);
- ``eval()`` mode -> predictions.

=================  ==========================================  =================================================
task               call                                        eval output
=================  ==========================================  =================================================
classification     ``model(x[, targets (N,) or (N, C)])``      logits ``(N, C)``
detection          ``model(images[, targets])``                ``[{"boxes" xyxy, "labels", "scores"}]`` per image
segmentation       ``model(x[, masks (N, H, W)])``             logits ``(N, C, H, W)`` at input resolution
change_detection   ``model(image_a, image_b[, masks])``        logits ``(N, C, H, W)`` at input resolution
=================  ==========================================  =================================================

Detection images are a list of ``(3, H, W)`` tensors (or one batch tensor) with values in ``[0, 1]``; the
detector normalises with the backbone's mean/std. Detection labels are ``0 .. num_classes - 1`` for every head
(the background slot that Faster R-CNN and SSD reserve is handled inside). Dense tasks take normalised tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from .base import InputSpec, TaskModel
from .registry import (
    _load,
    all_heads,
    get_head,
    get_task,
    head_names,
    register_head,
    register_task,
    task_class,
    task_names,
)

_load()  # the task modules register the tasks and their heads

#: heads per task, default first (a read-only view of the registry)
TASK_HEADS: Mapping[str, tuple[str, ...]] = MappingProxyType(all_heads())
#: default number of classes per task when none is given
DEFAULT_NUM_CLASSES: Mapping[str, int | None] = MappingProxyType(
    {t: get_task(t).default_num_classes for t in task_names()})


def build_task_model(
    task: str,
    backbone_name: str,
    head: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    pretrained_backbone: bool | str = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``head`` for ``task`` on ``backbone_name`` (a LightZoo or timm model with ``features_only``).

    ``pretrained_backbone`` loads the backbone's ImageNet weights (``True`` or a weights tag); the head starts
    from scratch. ``kwargs`` go to the head builder (e.g. ``min_size``, ``fpn_channels``, ``ignore_index``).
    """
    entry = get_head(task, head)
    if num_classes is None:
        num_classes = get_task(task).default_num_classes
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return entry.build(backbone_name, in_chans=in_chans, pretrained_backbone=pretrained_backbone, **kwargs)


def supported_heads(backbone_name: str) -> dict[str, list[str]]:
    """Heads that can be built on ``backbone_name``, judged from the strides of its feature pyramid."""
    from ..registry import get_pretrained_cfg
    from ._backbone import feature_reductions

    cfg = get_pretrained_cfg(backbone_name)
    if cfg is not None and len(cfg.input_size or ()) != 3:  # volumetric models (lightm_unet_3d): heads here are 2D
        return {}
    have = set(feature_reductions(backbone_name))
    out: dict[str, list[str]] = {}
    for task in task_names():
        ok = [h for h in head_names(task)
              if _fits(get_head(task, h).needs, get_head(task, h).min_levels, have, get_task(task).needs_features)
              and (get_head(task, h).model_class or get_task(task)).supports(backbone_name)]
        if ok:
            out[task] = ok
    return out


def _fits(needs: tuple[int, ...], min_levels: int, have: set[int], needs_features: bool) -> bool:
    if not needs_features:
        return True
    return bool(have) and set(needs) <= have and len(have) >= min_levels


__all__ = ["DEFAULT_NUM_CLASSES", "TASK_HEADS", "InputSpec", "TaskModel", "build_task_model", "get_head", "get_task",
           "head_names", "register_head", "register_task", "supported_heads", "task_class", "task_names"]
