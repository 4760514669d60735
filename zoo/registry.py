"""Which models are LightZoo's own, and which of them are in timm's classifier registry.

Our classifier families register into timm's registry (so ``timm.create_model`` finds them and timm's own model
test-suite runs over them); this module additionally keeps the set of names that belong to us, so
``zoo.list_models()`` does not list timm's thousand models.

A model that is not an image classifier (LightM-UNet: its output is a segmentation mask, so it cannot meet timm's
classifier contract -- pooled ``(B, num_classes)`` logits, ``reset_classifier(0)`` giving pooled features) is
registered with ``@register_zoo_model(timm_classifier=False)``: it stays out of timm's registry and is built by
:func:`create_timm_model`, which runs its entrypoint the way ``timm.create_model`` would (``features_only``,
``pretrained_cfg`` tags and overlays, ``exportable``, ``checkpoint_path``). Library code that builds a model by
name calls :func:`create_timm_model` and :func:`get_pretrained_cfg`, which serve both kinds.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar, overload

from timm.layers import set_layer_config
from timm.models import register_model, split_model_name_tag

from .errors import UnknownModelError

_ZOO_MODELS: dict[str, str] = {}  # name -> family (module stem)
# models kept out of timm's registry: name -> entrypoint, and name -> the family's DefaultCfg (its tagged cfgs)
_ZOO_ONLY: dict[str, Callable[..., Any]] = {}
_ZOO_ONLY_CFGS: dict[str, Any] = {}

F = TypeVar("F", bound=Callable[..., Any])


@overload
def register_zoo_model(fn: F) -> F: ...
@overload
def register_zoo_model(*, timm_classifier: bool = True) -> Callable[[F], F]: ...
def register_zoo_model(fn: F | None = None, *, timm_classifier: bool = True) -> F | Callable[[F], F]:
    """Add a model entrypoint to LightZoo's list and, for classifiers, to timm's registry.

    ``@register_zoo_model`` is ``timm.models.register_model`` plus membership in LightZoo's list.
    ``@register_zoo_model(timm_classifier=False)`` keeps a model that does not meet timm's classifier contract out
    of timm's registry; its family module's ``default_cfgs`` (defined above the entrypoints, as timm requires
    too) are kept here instead.
    """

    def add(fn: F) -> F:
        name = fn.__name__
        if timm_classifier:
            fn = register_model(fn)
        else:
            _ZOO_ONLY[name] = fn
            cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
            if name in cfgs:
                _ZOO_ONLY_CFGS[name] = cfgs[name]
        _ZOO_MODELS[name] = fn.__module__.rsplit(".", 1)[-1]
        return fn

    return add(fn) if fn is not None else add


def _ensure_families_loaded() -> None:
    from . import backbones  # noqa: F401  (importing registers every family)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of LightZoo's models, optionally filtered by a shell-style pattern (``"emov2*"``)."""
    _ensure_families_loaded()
    names = sorted(_ZOO_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def timm_registered_models() -> list[str]:
    """LightZoo's models that are in timm's registry (the names timm's model test-suite runs over)."""
    return [n for n in list_models() if n not in _ZOO_ONLY]


def is_timm_registered(name: str) -> bool:
    """Whether ``timm.create_model(name)`` builds this model (False for LightZoo-only models such as LightM-UNet)."""
    import timm

    return split_model_name_tag(name)[0] not in _ZOO_ONLY and timm.is_model(name)


def get_pretrained_cfg(name: str) -> Any:
    """The ``PretrainedCfg`` of ``name`` (``arch`` or ``arch.tag``), for timm's models and LightZoo-only ones alike;
    None when the architecture has none."""
    import timm.models

    arch, tag = split_model_name_tag(name)
    if arch in _ZOO_ONLY_CFGS:
        default_cfg = _ZOO_ONLY_CFGS[arch]
        tag = tag or default_cfg.tags[0]
        if tag not in default_cfg.cfgs:
            raise UnknownModelError(f"unknown pretrained tag {tag!r} for {arch!r}; tags: {list(default_cfg.tags)}")
        # as timm's register_model stores each tag's cfg
        return replace(default_cfg.cfgs[tag], architecture=arch, tag=tag or None)
    if arch in _ZOO_ONLY:
        return None
    return timm.models.get_pretrained_cfg(name)


def create_timm_model(name: str, pretrained: bool = False, pretrained_cfg: Any = None,
                      pretrained_cfg_overlay: dict[str, Any] | None = None, checkpoint_path: str | None = None,
                      scriptable: bool | None = None, exportable: bool | None = None, no_jit: bool | None = None,
                      **kwargs: Any) -> Any:
    """``timm.create_model`` for every name LightZoo builds: timm's own and our timm-registered models go straight
    to timm; LightZoo-only models run their entrypoint with the same arguments timm would pass (None-valued
    kwargs dropped, a ``name.tag`` or ``pretrained_cfg`` tag resolved to that tag's cfg, layer config set)."""
    import timm

    arch, tag = split_model_name_tag(name)
    if arch not in _ZOO_ONLY:
        return timm.create_model(name, pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay, checkpoint_path=checkpoint_path,
                                 scriptable=scriptable, exportable=exportable, no_jit=no_jit, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(pretrained_cfg, str):
        tag, pretrained_cfg = pretrained_cfg, None
    if pretrained_cfg is None:
        pretrained_cfg = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    with set_layer_config(scriptable=scriptable, exportable=exportable, no_jit=no_jit):
        model = _ZOO_ONLY[arch](pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                                pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)
    if checkpoint_path:
        from timm.models import load_checkpoint

        load_checkpoint(model, checkpoint_path)
    return model


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
