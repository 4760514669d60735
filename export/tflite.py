"""TFLite / LiteRT ``.tflite`` via litert-torch (``zoo export --format tflite``), checked in the LiteRT interpreter.

``litert_torch.convert`` (Google's PyTorch -> LiteRT converter, formerly ai-edge-torch) runs ``torch.export`` on
the task adapter (:mod:`export.spec`), lowers the graph to StableHLO and converts it to a LiteRT flatbuffer. The
file is loaded back with the interpreter that litert-torch installs (``ai_edge_litert.interpreter``, the runtime
Android apps embed; it applies its XNNPACK delegate on CPU) and compared with PyTorch exactly like the ONNX path:
max abs diff per output and top-1 agreement (:func:`export.executorch.check_runtime_parity`).

Layout: the ``.tflite`` graph keeps PyTorch's NCHW input (``(1, C, H, W)`` float32, normalised like the ONNX
input); the converter inserts the transposes it needs. Fixed batch of 1.

litert-torch is an optional extra (``pip install 'lightzoo[tflite]'``): verified with ``litert-torch==0.10.0``
(which brings ``ai-edge-litert==2.3.0``) on torch 2.14.1; it installs without changing torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from zoo.errors import ExportError

from .executorch import _first_line, check_runtime_parity, missing_extra_error
from .onnx_export import exporting
from .parity import Batch, ParityReport
from .spec import ExportSpec, build_adapter

#: the ``setup.cfg`` extra and the versions this module was verified with (torch 2.14.1)
EXTRA = "tflite"
VERIFIED = "litert-torch==0.10.0, ai-edge-litert==2.3.0"


def require_litert() -> None:
    """Raise :class:`ExportError` naming the ``tflite`` extra when litert-torch or the LiteRT interpreter is
    missing; called before any model is loaded."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as e:
        raise missing_extra_error("tflite", EXTRA, VERIFIED, e) from e


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"litert-torch": version("litert-torch"), "ai-edge-litert": version("ai-edge-litert")}


def to_tflite(model: nn.Module, path: str | os.PathLike, spec: ExportSpec) -> Path:
    """Convert ``model`` (wrapped in the task's adapter) to ``.tflite`` with litert-torch.

    Raises :class:`ExportError` with the converter's first error line when the conversion fails.
    """
    require_litert()
    import litert_torch

    if spec.dynamic_batch:
        raise ExportError("--format tflite writes a fixed batch of 1; drop --dynamic-batch")
    path = Path(path)
    adapter = build_adapter(model.eval().float().cpu(), spec)
    tmp = path.with_name(path.name + ".tmp")
    log = io.StringIO()
    try:
        with exporting(adapter), contextlib.redirect_stdout(log):  # the converter prints progress lines
            converted = litert_torch.convert(adapter, spec.example_inputs(1))
            converted.export(str(tmp))
    except Exception as e:  # noqa: BLE001 - torch.export / StableHLO / the converter raise many types
        tmp.unlink(missing_ok=True)
        raise ExportError(f"litert-torch conversion of {path.stem} to .tflite failed: {_first_line(e)}") from e
    os.replace(tmp, path)
    return path


def load_tflite(path: str | os.PathLike, threads: int | None = 1) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """A function running the ``.tflite`` file's default signature on one batch-1 sample (one array per input,
    in the PyTorch forward's order: the converter names them ``args_0``, ``args_1``, ...)."""
    require_litert()
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or 1)
        signatures = interpreter.get_signature_list()
        key = next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
    except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError
        raise ExportError(f"the LiteRT interpreter cannot load {str(path)!r}: {_first_line(e)}") from e
    in_names = sorted(signatures[key]["inputs"], key=_index)
    out_names = sorted(signatures[key]["outputs"], key=_index)

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(in_names):
            raise ExportError(f"{Path(path).name} takes {len(in_names)} inputs ({', '.join(in_names)}); "
                              f"got {len(inputs)}")
        try:
            outs = runner(**{n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(in_names, inputs)})
        except Exception as e:  # noqa: BLE001 - e.g. a kernel LiteRT lacks (LWGANet's unpool: STABLEHLO_SCATTER)
            raise ExportError(f"the LiteRT interpreter cannot run {Path(path).name}: {_first_line(e)}") from e
        return [np.array(outs[n]) for n in out_names]

    return run


def _index(name: str) -> int:
    """``args_10`` -> 10, so that inputs/outputs sort numerically rather than as strings."""
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else 0


def check_parity_tflite(model: nn.Module, path: str | os.PathLike, spec: ExportSpec, *, images: Batch | None = None,
                        n_random: int = 4, atol: float | None = None, threads: int | None = 1,
                        raise_on_fail: bool = True) -> ParityReport:
    """Run the ``.tflite`` in the LiteRT interpreter and ``model`` in PyTorch; see
    :func:`export.executorch.check_runtime_parity`."""
    return check_runtime_parity(model, path, spec, load_tflite(path, threads), images=images, n_random=n_random,
                                atol=atol, label="fp32 .tflite (LiteRT)", raise_on_fail=raise_on_fail)
