"""The one registry of tasks and heads: every other part of LightZoo asks it instead of comparing names.

A *task* is a :class:`~zoo.heads.base.TaskModel` subclass registered with :func:`register_task` (its ``task``
attribute is the name users type). A *head* is a builder registered with :func:`register_head` under its task; the
builder returns an instance of the task class (or of a subclass that owns head-specific behaviour, as torchvision's
``RetinaNet`` and ``FCOS`` own their post-processing). The order of registration is the order users see; the first
head of a task is its default.

Bare modules that are not task models (a plain timm classifier from ``zoo.create_model(name)``, or a complete
network registered as a backbone that declares ``task = "segmentation"``) are described by :func:`task_class`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import TaskModel

T = TypeVar("T")


@dataclass(frozen=True)
class HeadEntry:
    """One registered head: its builder and the feature strides it reads (to judge which backbones fit)."""

    task: str
    name: str
    build: Callable[..., nn.Module]
    #: the class the builder returns, when a head has its own (detection heads own their post-processing)
    model_class: type | None = None
    #: strides the head needs from the backbone (4 is always optional)
    needs: tuple[int, ...] = ()
    #: feature levels the head needs at least (a U-Net needs a skip)
    min_levels: int = 1


_TASKS: dict[str, type[TaskModel]] = {}
_HEADS: dict[str, dict[str, HeadEntry]] = {}


def register_task(cls: type[T]) -> type[T]:
    """Class decorator for a task model base class; ``cls.task`` is the task's name."""
    name = cls.task  # type: ignore[attr-defined]
    if name in _TASKS:
        raise ValueError(f"task {name!r} is registered twice")
    _TASKS[name] = cls  # type: ignore[assignment]
    _HEADS.setdefault(name, {})
    return cls


def register_head(task: str, name: str, *, needs: tuple[int, ...] = (), min_levels: int = 1
                  ) -> Callable[[T], T]:
    """Decorator for a head: a builder ``build(backbone_name, num_classes=..., in_chans=...,
    pretrained_backbone=..., **head_kwargs) -> TaskModel``, or a task-model subclass whose class method ``build``
    is that builder."""

    def add(obj: T) -> T:
        if task not in _TASKS:
            raise ValueError(f"register the task {task!r} before its heads")
        if isinstance(obj, type):
            obj.head = name  # type: ignore[attr-defined]
            entry = HeadEntry(task, name, obj.build, obj, tuple(needs), min_levels)  # type: ignore[attr-defined]
        else:
            entry = HeadEntry(task, name, obj, None, tuple(needs), min_levels)  # type: ignore[arg-type]
        _HEADS[task][name] = entry
        return obj

    return add


#: the modules that register the tasks and heads, in the order users see the tasks
TASK_MODULES = ("classification", "detection", "segmentation", "change")


def _load() -> None:
    import importlib

    for module in TASK_MODULES:  # importing registers; a loop keeps the order import sorting would change
        importlib.import_module(f"{__package__}.{module}")


def task_names() -> tuple[str, ...]:
    """Registered tasks, in the order users see them (classification first)."""
    _load()
    return tuple(_TASKS)


def head_names(task: str) -> tuple[str, ...]:
    """Heads of ``task``, default first."""
    get_task(task)
    return tuple(_HEADS[task])


def get_task(task: str) -> type[TaskModel]:
    """The task model class of ``task``; a ``ConfigError`` listing the tasks otherwise."""
    _load()
    if task not in _TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(_TASKS)}")
    return _TASKS[task]


def get_head(task: str, head: str | None = None) -> HeadEntry:
    """The entry of ``head`` (``None``: the task's default head); a ``ConfigError`` listing the heads otherwise."""
    heads = _HEADS[get_task(task).task]
    if head is None:
        return next(iter(heads.values()))
    if head not in heads:
        raise ConfigError(f"unknown {task} head {head!r}; choose one of {', '.join(heads)}")
    return heads[head]


def all_heads() -> dict[str, tuple[str, ...]]:
    """``{task: (head, ...)}`` for every task."""
    return {t: head_names(t) for t in task_names()}


def task_class(model: nn.Module, task: str | None = None) -> type[TaskModel]:
    """The task class that describes ``model``: its own class for a task model; for a bare module, the class of
    its declared ``task`` attribute (complete dense networks registered as backbones declare it), of ``task`` when
    the caller names one, else classification (timm's classifiers)."""
    from .base import TaskModel

    if isinstance(model, TaskModel):
        if task is not None and task != model.task:
            raise ConfigError(f"the model is a {model.task} model; it cannot be used as {task}")
        return type(model)
    declared = getattr(model, "task", None)
    return get_task(task or (declared if isinstance(declared, str) else None) or next(iter(task_names())))
