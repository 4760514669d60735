"""One entry point for every model: LightZoo's backbones, any timm model, and task models built on either."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint, read_metadata
from .errors import ZooError
from .registry import check_model_name, create_timm_model
from .validate import install_input_check

TASKS = ("classification", "detection", "segmentation", "change_detection")


def create_model(
    name: str | None = None,
    pretrained: bool | str = False,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    task: str = "classification",
    head: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, like ``timm.create_model``, for any of the four tasks.

    ``pretrained`` is ``True`` (the default weights tag), a tag such as ``"in1k_kd"``, or ``False``.
    ``checkpoint_path`` loads an official release (through the family's ``checkpoint_filter_fn``) or one of our
    safetensors checkpoints; for the latter ``name`` may be omitted, since the sidecar records the model, task,
    head and number of classes it was trained with. ``in_chans=None`` keeps the model's own default (3 for image
    models, 1 for ``lightm_unet_3d``).
    """
    meta = read_metadata(checkpoint_path) if checkpoint_path else None
    if meta:
        name = name or meta.get("model")
        task = meta.get("task", task) if task == "classification" else task
        head = head or meta.get("head")
        num_classes = num_classes if num_classes is not None else meta.get("num_classes")
        in_chans = meta.get("in_chans", in_chans)
        kwargs = {**meta.get("model_kwargs", {}), **kwargs}
    if name is None:
        raise ZooError("create_model needs a model name (or a LightZoo checkpoint whose sidecar names one)")
    if task not in TASKS:
        raise ZooError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    check_model_name(name)

    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None and task == "classification":
        kwargs["in_chans"] = in_chans
    if task == "classification":
        # timm's loader for every model; ours resolve their tags from weights_manifest.json, checked on download
        from .weights import timm_pretrained_args

        weights = timm_pretrained_args(name, False if checkpoint_path else pretrained)
        model = create_timm_model(name, **weights, **kwargs)
    else:
        from .heads import build_task_model

        model = build_task_model(task, name, head=head, in_chans=3 if in_chans is None else in_chans,
                                 pretrained_backbone=False if checkpoint_path else pretrained, **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return install_input_check(model, task)  # uint8/float64/empty/NaN inputs: a clear InputShapeError
