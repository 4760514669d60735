"""timm's factory keyword arguments ``device`` and ``dtype`` for model classes built from torchvision/timm blocks.

``timm.create_model(name, device=..., dtype=...)`` passes both to the model class (timm's own classes thread them
through every layer; timm's test-suite builds models on the ``meta`` device this way). Our classes compose blocks
that do not all take them (torchvision's ``InvertedResidual``), so the family's ``build_model_with_cfg`` call gets
a constructor that builds under a ``torch.device`` context -- every parameter and buffer is created there, none is
moved -- and then casts floating-point tensors to ``dtype``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

__all__ = ["with_factory_kwargs"]


def with_factory_kwargs(model_cls: Callable[..., M]) -> Callable[..., M]:
    """``model_cls`` as a constructor that also accepts ``device`` and ``dtype`` (timm's factory kwargs)."""

    def build(*args: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
              **kwargs: Any) -> M:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = model_cls(*args, **kwargs)
        if dtype is not None:
            model.to(dtype=dtype)
        return model

    build.__name__ = build.__qualname__ = getattr(model_cls, "__name__", "build")
    build.__doc__ = model_cls.__doc__
    return build
