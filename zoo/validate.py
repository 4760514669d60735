"""One input check for every model :func:`zoo.create_model` returns.

Why a forward pre-hook at the factory rather than checks in each family: the families already check rank and
channels (each knows its own layout), but the mistakes every family shares, an ``uint8`` image batch straight from a
decoder, a ``float64`` array from numpy, an empty batch, NaN/Inf values from a broken preprocessing step, otherwise
surface as a dtype mismatch deep inside a convolution, a reshape error in an attention window, or silently NaN
outputs. The hook turns each into an :class:`~zoo.errors.InputShapeError` that names the tensor, its shape and dtype
and what to do.

What it costs: a few attribute reads plus one sum over the input for the finite-values check (the input is the
smallest tensor a vision network touches; measured at 0.06% of an ``emov2_1m`` forward at 224x224 on CPU, while
``torch.isfinite(x).all()`` cost 15x more). On a GPU the check synchronises the device once per forward. It does
nothing while a model is traced, scripted, compiled or exported, so exported graphs are unchanged, and the dtype
rule is skipped under autocast (autocast casts inputs itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import InputShapeError


def _capturing() -> bool:
    """True while a graph is being captured: checks must stay out of the graph.

    LightZoo's exporter says so through timm's switch (``timm.layers.is_exportable()``), the one models read.
    This hook is not part of any model but wraps every model the factory returns, including captures a user starts
    without that switch (``torch.jit.trace``, ``torch.compile``, ``torch.export``), so those are recognised too.
    """
    from timm.layers import is_exportable

    if is_exportable() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting())


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_image_tensor(x: Any, what: str, want: torch.dtype | None) -> None:
    """Raise :class:`InputShapeError` for an image tensor no model can take (dtype, empty batch, NaN/Inf)."""
    if not isinstance(x, torch.Tensor):  # FX proxies, lists handled by the caller, None: not ours to judge
        return
    if x.is_meta:  # shape-only runs (MAC counting, size probes) have no values to check
        return
    shape = tuple(x.shape)
    if not x.is_floating_point():
        raise InputShapeError(
            f"{what} has dtype {x.dtype} (shape {shape}); models take floating-point images: convert and normalise "
            f"first, e.g. (x.float() / 255 - mean) / std, as zoo.data's transforms do")
    if want is not None and x.dtype != want and not torch.is_autocast_enabled(x.device.type):
        raise InputShapeError(
            f"{what} has dtype {x.dtype} (shape {shape}) but the model's weights are {want}; use x.to({want}) "
            f"(or model.to({x.dtype}) to run the model in {x.dtype})")
    if x.ndim >= 1 and x.shape[0] == 0:
        raise InputShapeError(f"{what} is an empty batch (shape {shape}); pass at least one image")
    # fast path: one reduction (a NaN or Inf anywhere makes the sum non-finite); the exact count only on failure,
    # where a sum that merely overflowed (values near float max) is let through
    if x.numel() and not x.is_meta and not bool(torch.isfinite(x.sum())):  # meta: shape-only runs have no values
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        if not n_nan and not n_inf:
            return
        raise InputShapeError(
            f"{what} (shape {shape}) contains {n_nan} NaN and {n_inf} infinite values; the outputs would be NaN. "
            f"Check the image decoding and normalisation (a std of 0?)")


def input_check_hook(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook installed by :func:`install_input_check`."""
    if _capturing():
        return
    want = _param_dtype(model)
    names = ("input", "image_b")
    for i, a in enumerate(args[: getattr(model, "_zoo_image_args", 1)]):
        if isinstance(a, Sequence) and not isinstance(a, (str, torch.Tensor)):
            for j, im in enumerate(a):
                check_image_tensor(im, f"{names[min(i, 1)]}[{j}]", want)
        else:
            check_image_tensor(a, names[min(i, 1)], want)


def install_input_check(model: nn.Module, task: str | None = None) -> nn.Module:
    """Register the input check on ``model`` (once) and return it. The positional arguments that are images are
    the model's task's inputs (the others are targets, which the heads check themselves)."""
    if getattr(model, "_zoo_input_check", False):
        return model
    from .heads import task_class

    model._zoo_image_args = len(task_class(model, task).input_names)  # type: ignore[assignment]
    model._zoo_input_check = True  # type: ignore[assignment]
    model.register_forward_pre_hook(input_check_hook)
    return model
