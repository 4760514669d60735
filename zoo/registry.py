"""Which timm-registered models are LightZoo's own.

Our families register into timm's registry (so ``timm.create_model`` finds them); this module additionally keeps the
set of names that belong to us, so ``zoo.list_models()`` does not list timm's thousand models.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from timm.models import register_model

from .errors import UnknownModelError

_ZOO_MODELS: dict[str, str] = {}  # name -> family (module stem)

F = TypeVar("F", bound=Callable[..., Any])


def register_zoo_model(fn: F) -> F:
    """``timm.models.register_model`` plus membership in LightZoo's own list."""
    fn = register_model(fn)
    _ZOO_MODELS[fn.__name__] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def _ensure_families_loaded() -> None:
    from . import backbones  # noqa: F401  (importing registers every family)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of LightZoo's models, optionally filtered by a shell-style pattern (``"emov2*"``)."""
    _ensure_families_loaded()
    names = sorted(_ZOO_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def model_family(name: str) -> str:
    """The family (backbone module) a LightZoo model comes from."""
    _ensure_families_loaded()
    check_model_name(name)
    return _ZOO_MODELS.get(name, "timm")


def check_model_name(name: str) -> None:
    """Raise ``UnknownModelError`` with close matches when ``name`` is neither ours nor timm's."""
    import timm

    _ensure_families_loaded()
    if name in _ZOO_MODELS or timm.is_model(name):
        return
    ours = sorted(_ZOO_MODELS)
    close = difflib.get_close_matches(name.lower().replace("-", "_"), ours, n=3, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} (`zoo list` shows LightZoo's models; any timm model name also works)"
    )
