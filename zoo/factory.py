"""One entry point for every model: LightZoo's backbones, any timm model, and task models built on either."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint, read_metadata
from .errors import ZooError
from .registry import check_model_name
from .validate import install_input_check


class _RegisteredTasks(Sequence[str]):
    """``zoo.TASKS``: the registry's task names, read when first used so ``import zoo`` stays light."""

    def _names(self) -> tuple[str, ...]:
        from .heads import task_names

        return task_names()

    def __getitem__(self, i: Any) -> Any:
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


TASKS: Sequence[str] = _RegisteredTasks()


def create_model(
    name: str | None = None,
    pretrained: bool | str = False,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    task: str | None = None,
    head: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, like ``timm.create_model``, for any registered task (default: classification).

    ``pretrained`` is ``True`` (the default weights tag), a tag such as ``"in1k_kd"``, or ``False``.
    ``checkpoint_path`` loads an official release (through the family's ``checkpoint_filter_fn``) or one of our
    safetensors checkpoints; for the latter ``name`` may be omitted, since the sidecar records the model, task,
    head, number of classes and data config it was trained with (the data config overlays the model's
    ``pretrained_cfg``, as timm's ``pretrained_cfg_overlay`` does, so the model resolves the training's
    preprocessing). ``in_chans=None`` keeps the model's own default (3 for image models, 1 for ``lightm_unet_3d``).
    """
    from .heads import get_head, get_task, task_names

    meta = read_metadata(checkpoint_path) if checkpoint_path else None
    if meta:
        name = name or meta.get("model")
        task = task or meta.get("task")
        head = head or meta.get("head")
        num_classes = num_classes if num_classes is not None else meta.get("num_classes")
        in_chans = meta.get("in_chans", in_chans)
    if name is None:
        raise ZooError("create_model needs a model name (or a LightZoo checkpoint whose sidecar names one)")
    task_cls = get_task(task or task_names()[0])
    check_model_name(name)
    if meta:
        # the detector's internal resize (and any other size-dependent argument) follows the training size
        size = (meta.get("data_config") or {}).get("input_size") or meta.get("input_size")
        head_cls = get_head(task_cls.task, head).model_class or task_cls
        size_kw = head_cls.size_kwargs(int(size[-1])) if size else {}
        kwargs = {**size_kw, **meta.get("model_kwargs", {}), **kwargs}
    model = task_cls.create(name, pretrained=False if checkpoint_path else pretrained, head=head,
                            num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    if meta:
        overlay_data_config(model, meta)
    return install_input_check(model)  # uint8/float64/empty/NaN inputs: a clear InputShapeError


def overlay_data_config(model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Put a checkpoint's preprocessing into ``model.pretrained_cfg`` (timm's overlay), where
    :func:`zoo.data.transforms.resolve_data_config` finds it."""
    from .data.transforms import DATA_CONFIG_KEYS

    recorded = dict(meta.get("data_config") or {})
    for key in ("input_size", "mean", "std", "color", "in_chans"):  # sidecars written before data_config existed
        if key not in recorded and meta.get(key) is not None:
            recorded[key] = meta[key]
    keep = {k: (tuple(v) if isinstance(v, list) else v) for k, v in recorded.items()
            if k in (*DATA_CONFIG_KEYS, "in_chans")}
    model.pretrained_cfg = {**dict(getattr(model, "pretrained_cfg", None) or {}), **keep}
