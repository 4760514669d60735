"""PyTorch -> ONNX, with either of torch's two exporters and an automatic fallback to the other.

Choice of exporter. ``dynamo`` (``torch.onnx.export(..., dynamo=True)``, torch.export + onnxscript) is the default
because it is the exporter PyTorch maintains: it handles models the TorchScript tracer cannot (the official
LWGANet only exports with it) and yields an optimised graph. It is slow (15-30 s per model on 2 cores, most of it
decompositions), so ``legacy`` (the TorchScript tracer, ``dynamo=False``; about 1-2 s) stays available. When the
chosen exporter raises, the other is tried automatically (logged as a warning), and the exporter actually used is
recorded in the result and the metadata sidecar. An exporter can also succeed and write a *wrong* graph (the
tracer drops in-place writes through views, as in EMOv2's window attention), so
:func:`export.pipeline.export_onnx_verified` (what the CLI uses) also falls back when the parity check fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import onnx
import torch
from timm.layers import set_layer_config
from torch import nn

from zoo.errors import ExportError

from .spec import ExportSpec, as_tuple, build_adapter, build_spec, normalize_input_size, resolve_task

logger = logging.getLogger(__name__)
T = TypeVar("T")

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 18
#: protobuf cannot hold a single file over 2 GiB; above this many weight bytes the weights go to a side file
EXTERNAL_DATA_BYTES = 1_800_000_000


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch.onnx can write and the installed ``onnx`` package can check (both ends inclusive)."""
    from torch.onnx import _constants

    return _constants.ONNX_MIN_OPSET, min(_constants.ONNX_MAX_OPSET, onnx.defs.onnx_opset_version())


def check_opset(opset: int) -> None:
    """An ``ExportError`` before any work for an opset no exporter can write (e.g. 3, or 99)."""
    lo, hi = opset_range()
    if not lo <= opset <= hi:
        raise ExportError(f"opset {opset} is impossible here: torch.onnx writes opsets {lo}..{hi} "
                          f"(default {DEFAULT_OPSET}); pass --opset in that range")


def _written_opset(path: Path) -> int | None:
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class ModelDoesNotRun(ExportError):
    """The model fails in PyTorch itself on the requested input size; no exporter can help."""


@dataclass
class OnnxExport:
    """Where the graph went and how it was produced."""

    path: Path
    spec: ExportSpec
    opset: int
    exporter: str
    requested_exporter: str
    fallback_reason: str | None = None
    external_data: bool = False
    simplified: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return self.spec.input_names

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names


class ExporterFailed(ExportError):
    """One exporter did not produce a usable graph (raised inside :func:`try_exporters` to move to the next)."""


def exporter_order(exporter: str, fallback: bool) -> list[str]:
    """``exporter`` first, then (with ``fallback``) the others."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    return [exporter] + ([e for e in EXPORTERS if e != exporter] if fallback else [])


def try_exporters(order: Sequence[str], attempt: Callable[[str], T]) -> tuple[T, list[str]]:
    """The one fallback policy: ``attempt(exporter)`` for each exporter in ``order`` until one returns.

    ``attempt`` raises :class:`ExporterFailed` to hand over to the next exporter (a logged warning says why);
    any other exception stops the loop. Returns the result and the reasons of the exporters that failed before
    it; when every exporter failed, the last :class:`ExporterFailed` propagates with all the reasons in its
    ``reasons`` attribute.
    """
    reasons: list[str] = []
    for i, name in enumerate(order):
        try:
            return attempt(name), reasons
        except ExporterFailed as e:
            reasons.append(str(e))
            if i + 1 == len(order):
                e.reasons = list(reasons)  # type: ignore[attr-defined]
                raise
            logger.warning("%s; retrying with the %s exporter", e, order[i + 1])
    raise ExportError("no exporter to try")


@contextlib.contextmanager
def exporting(model: nn.Module) -> Iterator[None]:
    """The one export switch: eval mode, no autograd, and timm's ``exportable`` layer config, which models read
    through ``timm.layers.is_exportable()`` to take their graph-friendly paths."""
    model.eval()
    with torch.no_grad(), set_layer_config(exportable=True):
        yield


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _export_dynamo(adapter: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: ExportSpec, opset: int,
                   external: bool, optimize: bool = True) -> None:
    dynamic_shapes = None
    if spec.dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in args)
    # the exporter narrates its progress on stdout; keep it for the error message only
    log = io.StringIO()
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(adapter, args, str(path), dynamo=True, opset_version=opset, input_names=spec.input_names,
                          output_names=spec.output_names, dynamic_shapes=dynamic_shapes, external_data=external,
                          verbose=False, optimize=optimize, report=False)


def _export_legacy(adapter: nn.Module, args: tuple[torch.Tensor, ...], path: Path, spec: ExportSpec, opset: int,
                   external: bool, optimize: bool = True) -> None:
    with warnings.catch_warnings():
        # the deprecation notice and tracer warnings: we chose this exporter on purpose and check parity after
        warnings.simplefilter("ignore")
        torch.onnx.export(adapter, args, str(path), dynamo=False, opset_version=opset, input_names=spec.input_names,
                          output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes() if spec.dynamic_batch else None,
                          do_constant_folding=True)
    if external:
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")


def _simplify(path: Path, required: bool) -> bool:
    """onnx-simplifier when installed (it is optional); keep the original when it cannot check its result."""
    try:
        import onnxsim  # type: ignore[import-not-found]
    except ImportError as e:
        if required:
            raise ExportError("simplify=True needs onnx-simplifier: pip install onnxsim") from e
        return False
    model = onnx.load(str(path))
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as e:  # noqa: BLE001 - an optional optimisation must never break an export
        logger.info("onnxsim failed (%s); keeping the unsimplified graph", _first_line(e))
        return False
    if ok:
        onnx.save(simplified, str(path))
    return bool(ok)


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int | Sequence[int] = 224,
    *,
    task: str | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    fallback: bool = True,
    simplify: bool | None = None,
    in_chans: int = 3,
    optimize: bool = True,
) -> OnnxExport:
    """Export ``model`` (eval mode, float32, CPU) to a self-contained ONNX file at ``path`` and run ``onnx.checker``.

    ``input_size`` is ``H``, ``(H, W)`` or ``(C, H, W)``. Graph inputs/outputs are named per task (see
    :mod:`export.spec`); the batch axis is ``batch`` (dynamic) with ``dynamic_batch`` and 1 otherwise.
    ``exporter`` picks ``"dynamo"`` (default) or ``"legacy"``; with ``fallback`` the other one is tried when it
    raises (a logged warning and ``OnnxExport.fallback_reason`` say why). ``simplify``: run onnx-simplifier
    (``None`` = when installed). ``optimize=False`` skips the dynamo exporter's onnxscript graph optimiser (about
    half its run time; onnxruntime optimises the graph again at load anyway). Weights above ~1.8 GB go to
    ``<path>.data`` (protobuf's 2 GiB limit).
    Parity is *not* checked here; :func:`export.check_parity` does that and the CLI always calls it.
    """
    order = exporter_order(exporter, fallback)
    check_opset(opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    size = normalize_input_size(input_size, in_chans)
    spec = build_spec(resolve_task(model, task), size, dynamic_batch, model)
    external = model_bytes(model) > EXTERNAL_DATA_BYTES
    with exporting(model):
        adapter = build_adapter(model, spec)
        # a dynamic batch is exported from batch 2: torch.export specialises sizes 0 and 1
        args = spec.example_inputs(2 if dynamic_batch else 1)
        try:
            as_tuple(adapter(*args))
        except ExportError:
            raise
        except Exception as e:
            raise ModelDoesNotRun(f"the model does not run on inputs of size {tuple(args[0].shape)} in PyTorch "
                                  f"({_first_line(e)}); pick another --input-size") from e

        def attempt(name: str) -> OnnxExport:
            for stale in (path, Path(str(path) + ".data")):
                stale.unlink(missing_ok=True)
            try:
                writer = {"dynamo": _export_dynamo, "legacy": _export_legacy}[name]  # looked up now: tests patch them
                writer(adapter, args, path, spec, opset, external, optimize)
                onnx.checker.check_model(str(path))
                written = _written_opset(path)
                if written != opset:  # the dynamo exporter keeps 18 when it cannot convert down, and says so quietly
                    raise ExportError(f"asked for opset {opset}, the exporter wrote opset {written}")
            except Exception as e:  # noqa: BLE001 - any exporter failure is reported (and may fall back)
                raise ExporterFailed(f"the {name} exporter failed ({_first_line(e)})") from e
            return OnnxExport(path=path, spec=spec, opset=opset, exporter=name, requested_exporter=exporter,
                              external_data=external)

        try:
            result, failures = try_exporters(order, attempt)
        except ExporterFailed as e:
            raise ExportError(f"ONNX export of {type(model).__name__} failed: "
                              + " | ".join(getattr(e, "reasons", [str(e)]))) from e
    result.fallback_reason = failures[0] if failures else None
    if simplify is not False:
        result.simplified = _simplify(path, required=bool(simplify))
    return result
