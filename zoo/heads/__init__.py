"""Task heads on any backbone: classification, detection, segmentation, change detection.

``zoo.create_model(backbone, task=..., head=..., num_classes=...)`` calls :func:`build_task_model`. Every task
model follows one contract so the trainer needs only a thin adapter per task:

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

from typing import Any

from torch import nn

from ..errors import ConfigError

#: heads per task, default first
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "classification": ("linear",),
    "detection": ("retinanet", "fcos", "ssdlite", "fasterrcnn"),
    "segmentation": ("fpn", "deeplabv3", "lraspp", "unet"),
    "change_detection": ("siamese_fpn",),
}

#: default number of classes when none is given: ImageNet, COCO, ADE20K, change/no-change
DEFAULT_NUM_CLASSES = {"classification": None, "detection": 80, "segmentation": 150, "change_detection": 2}

# strides each head reads; a head is offered for a backbone only if the backbone has them (4 is optional)
_HEAD_NEEDS: dict[str, dict[str, tuple[int, ...]]] = {
    "classification": {"linear": ()},
    "detection": {"retinanet": (8, 16, 32), "fcos": (8, 16, 32), "ssdlite": (16, 32), "fasterrcnn": (8, 16, 32)},
    "segmentation": {"fpn": (8, 16, 32), "deeplabv3": (), "lraspp": (8,), "unet": ()},
    "change_detection": {"siamese_fpn": (8, 16, 32)},
}


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
    if task not in TASK_HEADS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASK_HEADS)}")
    head = head or TASK_HEADS[task][0]
    if head not in TASK_HEADS[task]:
        raise ConfigError(f"unknown {task} head {head!r}; choose one of {', '.join(TASK_HEADS[task])}")
    if num_classes is None:
        num_classes = DEFAULT_NUM_CLASSES[task]
    common = dict(head=head, in_chans=in_chans, pretrained_backbone=pretrained_backbone, **kwargs)
    if task == "classification":
        from .classification import build_classification_model

        return build_classification_model(backbone_name, num_classes=num_classes, **common)
    if task == "segmentation":
        from .segmentation import build_segmentation_model

        return build_segmentation_model(backbone_name, num_classes=num_classes, **common)
    if task == "detection":
        from .detection import build_detection_model

        return build_detection_model(backbone_name, num_classes=num_classes, **common)
    from .change import build_change_model

    return build_change_model(backbone_name, num_classes=num_classes, **common)


def supported_heads(backbone_name: str) -> dict[str, list[str]]:
    """Heads that can be built on ``backbone_name``, judged from the strides of its feature pyramid."""
    from ..registry import get_pretrained_cfg
    from ._backbone import feature_reductions

    cfg = get_pretrained_cfg(backbone_name)
    if cfg is not None and len(cfg.input_size or ()) != 3:  # volumetric models (lightm_unet_3d): heads here are 2D
        return {}
    have = set(feature_reductions(backbone_name))
    out: dict[str, list[str]] = {}
    for task, heads in _HEAD_NEEDS.items():
        ok = [h for h, needs in heads.items() if task == "classification" or (have and set(needs) <= have)]
        if task == "segmentation" and len(have) < 2 and "unet" in ok:
            ok.remove("unet")
        if ok:
            out[task] = ok
    return out


__all__ = ["DEFAULT_NUM_CLASSES", "TASK_HEADS", "build_task_model", "supported_heads"]
