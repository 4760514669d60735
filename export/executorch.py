"""ExecuTorch ``.pte`` with the XNNPACK backend (``zoo export --format pte``), checked in ExecuTorch's own runtime.

The path is PyTorch's own: ``torch.export.export`` -> ``executorch.exir.to_edge_transform_and_lower`` with the
``XnnpackPartitioner`` (every operator XNNPACK supports runs in its optimised CPU kernels; the rest in ExecuTorch's
portable kernels) -> ``.to_executorch()`` -> the ``.pte`` flatbuffer an Android/iOS app loads with the ExecuTorch
runtime. The file is then loaded back with ``executorch.runtime`` (the same C++ runtime, through its Python
bindings) and compared with PyTorch exactly like the ONNX path (:mod:`export.parity`): max abs diff per output and
top-1 agreement, on a fixed random batch and, when given, real images.

ExecuTorch is an optional extra (``pip install 'lightzoo[executorch]'``): verified with ``executorch==1.5.1`` on
torch 2.14.1 (it installs without changing torch). The graph has a fixed batch of 1.

This module also holds :func:`check_runtime_parity`, the runtime-independent parity loop that the TFLite path
(:mod:`export.tflite`) shares.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.errors import ExportError

from .parity import (
    Batch,
    ParityReport,
    batchless_indices,
    compare_outputs,
    float64_noise_floor,
    random_batch,
    torch_outputs,
)
from .spec import DEFAULT_ATOL, ExportSpec, build_adapter

#: the ``setup.cfg`` extra and the versions this module was verified with (torch 2.14.1)
EXTRA = "executorch"
VERIFIED = "executorch==1.5.1"


def missing_extra_error(fmt: str, extra: str, verified: str, error: BaseException) -> ExportError:
    """The error for a format whose optional runtime is not installed: it names the extra to install."""
    return ExportError(f"--format {fmt} needs the optional '{extra}' extra, which is not installed "
                       f"({type(error).__name__}: {error}); install it with: pip install 'lightzoo[{extra}]' "
                       f"(verified: {verified})")


def require_executorch() -> None:
    """Raise :class:`ExportError` naming the ``executorch`` extra when ExecuTorch (or its XNNPACK backend or
    runtime bindings) cannot be imported; called before any model is loaded so the failure costs a second."""
    try:
        import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError as e:
        raise missing_extra_error("pte", EXTRA, VERIFIED, e) from e


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch")}


def to_pte(model: nn.Module, path: str | os.PathLike, spec: ExportSpec) -> Path:
    """Export ``model`` (wrapped in the task's adapter, see :mod:`export.spec`) to an XNNPACK-delegated ``.pte``.

    Raises :class:`ExportError` naming the failing stage (torch.export, lowering, serialisation).
    """
    require_executorch()
    if spec.dynamic_batch:
        raise ExportError("--format pte writes a fixed batch of 1; drop --dynamic-batch")
    from .pt2e import capture
    from .xnnpack_passes import lower_to_xnnpack

    path = Path(path)
    example = spec.example_inputs(1)

    try:
        # under the export switch (the models' graph paths, e.g. EMOv2's attention within six dimensions) with the
        # weight-only subgraphs folded to constants: XNNPACK delegates a conv only when its weight is a constant,
        # and EMOv2 folds its BatchNorms into the convs in the graph (left unfolded, its fp32 .pte ran ~20x slower)
        graph = capture(model, spec)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        raise ExportError(f"torch.export of {path.stem} failed (needed for .pte): {_first_line(e)}") from e
    try:
        buffer = lower_to_xnnpack(graph, example)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ExecuTorch lowering (XNNPACK) of {path.stem} failed: {_first_line(e)}") from e
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer)
    os.replace(tmp, path)  # never a half-written .pte at the path an app loads
    return path


def load_pte(path: str | os.PathLike, threads: int | None = None) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """A function running the ``.pte`` file's ``forward`` on one batch-1 sample (one array per input).

    ``threads`` sets the XNNPACK thread pool (process-wide in ExecuTorch); ``None`` leaves it as it is.
    """
    require_executorch()
    from executorch.runtime import Runtime

    if threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(int(threads))
    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as e:  # noqa: BLE001 - the bindings raise RuntimeError/ValueError
        raise ExportError(f"the ExecuTorch runtime cannot load {str(path)!r}: {_first_line(e)}") from e

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            outs = method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
        except Exception as e:  # noqa: BLE001 - the bindings raise RuntimeError
            raise ExportError(f"the ExecuTorch runtime cannot run {Path(path).name}: {_first_line(e)}") from e
        return [o.detach().numpy().copy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outs]

    return run


def run_per_sample(run_one: Callable[[Sequence[np.ndarray]], list[np.ndarray]], batch: Batch,
                   batchless: Sequence[int] = ()) -> list[np.ndarray]:
    """Run a fixed-batch-1 runtime on every sample of ``batch`` and stack the outputs (batchless ones once)."""
    chunks = [run_one([a[i:i + 1] for a in batch]) for i in range(batch[0].shape[0])]
    if len(chunks) == 1:
        return chunks[0]
    return [parts[0] if i in batchless else np.concatenate(parts, 0) for i, parts in enumerate(zip(*chunks))]


def check_runtime_parity(
    model: nn.Module,
    path: str | os.PathLike,
    spec: ExportSpec,
    run_one: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    *,
    images: Batch | None = None,
    n_random: int = 4,
    seed: int = 0,
    atol: float | None = None,
    min_agreement: float = 1.0,
    label: str = "fp32",
    raise_on_fail: bool = True,
    noise_floor: bool = True,
) -> ParityReport:
    """:func:`export.check_parity` for a runtime other than onnxruntime: same inputs, figures, tolerance rules
    (per-task ``DEFAULT_ATOL``, 100% agreement, the float64 noise floor) and report, so the ``.pte``/``.tflite``
    figures read exactly like the ``.onnx`` ones."""
    atol = DEFAULT_ATOL[spec.task] if atol is None else atol
    adapter = build_adapter(model.eval().float().cpu(), spec)
    report = ParityReport(str(path), label, atol, min_agreement, spec.primary_output)
    inputs: list[tuple[str, Batch]] = [("random", random_batch(spec, n_random, seed))] if n_random else []
    if images is not None and len(images[0]):
        inputs.append(("images", images))
    if not inputs:
        raise ValueError("check_runtime_parity needs random inputs (n_random > 0) or images")
    bl = batchless_indices(spec)
    runs = []
    for source, batch in inputs:
        ref = torch_outputs(adapter, batch, batchless=bl)
        got = run_per_sample(run_one, batch, bl)
        if len(got) != len(ref):
            raise ExportError(f"{Path(path).name} returns {len(got)} outputs; PyTorch returns {len(ref)} "
                              f"({', '.join(spec.output_names)})")
        runs.append((source, batch, ref, got))
        report.sets.append(compare_outputs(source, len(batch[0]), ref, got, spec, atol))
    if noise_floor and report.max_abs_diff > atol:
        report.noise_floor = float64_noise_floor(adapter, runs, spec)
        if report.noise_floor is not None:
            report.sets = [compare_outputs(src, len(b[0]), r, g, spec, report.effective_atol)
                           for src, b, r, g in runs]
    if raise_on_fail and not report.passed:
        raise ExportError(f"the exported model does not match PyTorch:\n{report.summary()}")
    return report


def check_parity_pte(model: nn.Module, path: str | os.PathLike, spec: ExportSpec, *, images: Batch | None = None,
                     n_random: int = 4, atol: float | None = None, threads: int | None = None,
                     raise_on_fail: bool = True) -> ParityReport:
    """Run the ``.pte`` in ExecuTorch's runtime and ``model`` in PyTorch; see :func:`check_runtime_parity`."""
    return check_runtime_parity(model, path, spec, load_pte(path, threads), images=images, n_random=n_random,
                                atol=atol, label="fp32 .pte (ExecuTorch XNNPACK)", raise_on_fail=raise_on_fail)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:400]}"

