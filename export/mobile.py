"""ONNX Runtime Mobile: the ``.ort`` flatbuffer format and the operator list for a reduced (smaller) runtime build.

``onnxruntime.tools.convert_onnx_models_to_ort`` applies the graph optimisations once, at conversion ("Fixed"
style, level "all" minus x86-only NCHWc unless ``target_platform="amd64"``) and writes ``<stem>.ort`` plus
``<stem>.required_operators.config``. Pass that config to onnxruntime's ``build.sh --minimal_build
--include_ops_by_config`` to compile a runtime with only the kernels the model needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ExportError

TARGET_PLATFORMS = (None, "arm", "amd64")


@dataclass
class OrtConversion:
    ort_path: Path
    config_path: Path
    log: str


def to_ort(onnx_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
           target_platform: str | None = None) -> OrtConversion:
    """Convert an ``.onnx`` file to ``.ort`` (in ``out_dir``, default next to it) and write the operator config.

    ``target_platform``: ``None`` (portable), ``"arm"`` (allows int8 QDQ fusions for ARM) or ``"amd64"``
    (allows the NCHWc layout, x86 only). Parity of the ``.ort`` file is checked by the caller
    (:func:`export.check_parity` loads ``.ort`` files as well).
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    if target_platform not in TARGET_PLATFORMS:
        raise ExportError(f"unknown target platform {target_platform!r}; choose arm or amd64 (or none)")
    onnx_path = Path(onnx_path).resolve()
    out = Path(out_dir).resolve() if out_dir else onnx_path.parent
    log = io.StringIO()
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    try:
        # the converter prints its progress; keep it for the error message
        with contextlib.redirect_stdout(log):
            convert_onnx_models_to_ort(onnx_path, output_dir=out, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=target_platform)
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions
        raise ExportError(f"ORT-format conversion of {onnx_path.name} failed: {type(e).__name__}: {e}\n"
                          f"{log.getvalue()[-2000:]}") from e
    ort_path = out / (onnx_path.stem + ".ort")
    config = out / (onnx_path.stem + ".required_operators.config")
    if not ort_path.is_file() or not config.is_file():
        raise ExportError(f"the ORT converter did not write {ort_path.name} and {config.name}:\n"
                          f"{log.getvalue()[-2000:]}")
    return OrtConversion(ort_path, config, log.getvalue())
