"""int8 quantization with onnxruntime's own tools, and what it costs in agreement and buys in size and speed.

``static`` (default): ``quant_pre_process`` (symbolic shape inference + graph optimisation, which folds BN and
fuses ops so quantization sees the graph that will run), then ``quantize_static`` in QDQ format (the format
onnxruntime mobile / NNAPI / XNNPACK consume) with per-channel int8 weights and uint8 activations whose ranges
come from MinMax calibration over the calibration batch. ``dynamic``: ``quantize_dynamic`` (weights int8, activation
ranges computed at run time; no calibration data; mostly helps MatMul/Gemm-heavy models).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.bench import interleaved_latency
from zoo.errors import ExportError

from .parity import Batch, agreement, batchless_indices, make_session, run_session, session_batch
from .spec import ExportSpec

logger = logging.getLogger(__name__)

MODES = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
SELECTS = ("all", "auto")


@dataclass
class QuantReport:
    """int8 against fp32: size, latency (batch 1, median, interleaved) and prediction agreement."""

    path: Path
    mode: str
    calibration: str
    calibration_samples: int
    size_fp32: int
    size_int8: int
    latency_fp32_ms: float | None
    latency_int8_ms: float | None
    agree: int
    total: int
    max_abs_diff: float
    options: dict[str, object] | None = None

    @property
    def agreement(self) -> float:
        return self.agree / self.total if self.total else 1.0

    def summary(self) -> str:
        lines = [f"int8 ({self.mode}, calibration: {self.calibration}, {self.calibration_samples} samples) -> "
                 f"{self.path.name}",
                 f"  size: {self.size_fp32 / 1e6:.2f} MB -> {self.size_int8 / 1e6:.2f} MB "
                 f"({self.size_fp32 / max(self.size_int8, 1):.2f}x smaller)"]
        if self.latency_fp32_ms is not None and self.latency_int8_ms is not None:
            lines.append(f"  latency (onnxruntime, batch 1, median): {self.latency_fp32_ms:.2f} ms -> "
                         f"{self.latency_int8_ms:.2f} ms ({self.latency_fp32_ms / self.latency_int8_ms:.2f}x)")
        sel = (self.options or {}).get("selection")
        if isinstance(sel, dict):
            ops = ", ".join(f"{k} {v}" for k, v in sorted(sel["kept_float_by_op"].items()))
            lines.append(f"  node selection auto: {sel['kept_float']} of {sel['profiled_nodes']} quantizable nodes "
                         f"kept in float (their int8 kernel was slower here){': ' + ops if ops else ''}")
        lines.append(f"  top-1 agreement with fp32 on the calibration set: {100 * self.agreement:.2f}% "
                     f"({self.agree}/{self.total}); max abs diff {self.max_abs_diff:.3g}")
        lines.append("  (a sanity check, not accuracy: `zoo benchmark CHECKPOINT` measures the metric change on the "
                     "validation split)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "options": self.options, "calibration": self.calibration,
                "calibration_samples": self.calibration_samples,
                "size_fp32_bytes": self.size_fp32, "size_int8_bytes": self.size_int8,
                "latency_fp32_ms": self.latency_fp32_ms, "latency_int8_ms": self.latency_int8_ms,
                "top1_agreement_with_fp32": self.agreement, "max_abs_diff_vs_fp32": self.max_abs_diff}


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory batch (fed in the graph's batch size)."""

    def __init__(self, batch: Batch, names: list[str], step: int) -> None:
        self.items = [{k: np.ascontiguousarray(a[i:i + step]) for k, a in zip(names, batch)}
                      for i in range(0, len(batch[0]) - step + 1, step)]
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk, including an external-data side file when there is one."""
    path = Path(path)
    side = Path(str(path) + ".data")
    return path.stat().st_size + (side.stat().st_size if side.exists() else 0)


def depthwise_convs(path: str | os.PathLike) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes in an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def _count_ops(timings: list, names: list[str]) -> dict[str, int]:
    ops: dict[str, int] = {}
    chosen = set(names)
    for t in timings:
        if t.name in chosen:
            ops[t.op_type] = ops.get(t.op_type, 0) + 1
    return ops


@contextlib.contextmanager
def _working_directory(path: str | os.PathLike) -> Iterator[None]:
    """Run a block in ``path``: onnxruntime's symbolic shape inference writes its debugging dump
    (``sym_shape_infer_temp.onnx`` and a uuid-named ``.data`` file) into the current directory when it gives up,
    which would litter the user's folder with a copy of the weights."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def quantize_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    spec: ExportSpec,
    calibration: Batch,
    *,
    mode: str = "static",
    calibration_source: str = "images",
    per_channel: bool = True,
    quant_format: str = "qdq",
    reduce_range: bool = False,
    exclude_depthwise: bool = False,
    select: str = "all",
    threads: int = 2,
    latency_rounds: int = 20,
    profile_rounds: int = 10,
) -> QuantReport:
    """Quantize ``onnx_path`` to ``out_path`` and compare the two on ``calibration`` (one array per graph input).

    Static-mode knobs (for speed experiments; the defaults are the portable choice): ``quant_format`` ``"qdq"``
    (QuantizeLinear/DequantizeLinear pairs around float ops: what onnxruntime mobile, NNAPI and XNNPACK consume) or
    ``"qoperator"`` (QLinearConv/QLinearMatMul/... ops; desktop onnxruntime only); ``reduce_range`` (7-bit weights,
    which avoids the int16 saturation of the AVX2 u8s8 kernels on CPUs without VNNI); ``exclude_depthwise``
    (keep depthwise convolutions in float: they are memory-bound, so quantizing them mostly adds Q/DQ work).
    ``select``: ``"all"`` quantizes every node onnxruntime can; ``"auto"`` (static mode) quantizes everything,
    profiles the float and int8 models node by node on this machine (``export.int8_select``, ``profile_rounds``
    runs each, ``threads`` threads) and quantizes again with the nodes whose int8 kernel was slower kept in float.
    The result is tuned to the CPU it ran on (AVX2 without VNNI here); export on the target class of machine.
    ``latency_rounds=0`` skips the latency measurement (tests; the figures are then ``None``).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ExportError(f"unknown int8 mode {mode!r}; choose one of {', '.join(MODES)}")
    if quant_format not in FORMATS:
        raise ExportError(f"unknown int8 format {quant_format!r}; choose one of {', '.join(FORMATS)}")
    if select not in SELECTS:
        raise ExportError(f"unknown int8 node selection {select!r}; choose one of {', '.join(SELECTS)}")
    if select == "auto" and (mode != "static" or quant_format != "qdq"):
        raise ExportError("int8 node selection 'auto' needs static QDQ quantization (mode='static', "
                          f"quant_format='qdq'), got mode={mode!r}, quant_format={quant_format!r}")
    onnx_path, out_path = Path(onnx_path).resolve(), Path(out_path).resolve()
    fp32 = make_session(onnx_path, threads=threads)
    step = session_batch(fp32) or min(len(calibration[0]), 8)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        try:
            with _working_directory(tmp):  # on failure it dumps sym_shape_infer_temp.onnx + data into the cwd
                quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=False)
        except Exception as e:  # noqa: BLE001 - symbolic shape inference fails on some graphs; ONNX's is enough
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            logger.info("symbolic shape inference failed (%s); used ONNX shape inference", type(e).__name__)
        excluded = depthwise_convs(pre) if exclude_depthwise else []
        selection: dict[str, object] | None = None

        def static(target: Path, exclude: list[str]) -> None:
            fmt = QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator
            quantize_static(str(pre), str(target), _Reader(calibration, spec.input_names, step),
                            quant_format=fmt, per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})

        try:
            if mode == "static" and select == "auto":
                from .int8_select import choose_excluded, profile_nodes, summary_table

                everything = Path(tmp) / "int8_all.onnx"
                static(everything, excluded)
                one = {n: np.ascontiguousarray(a[:step]) for n, a in zip(spec.input_names, calibration)}
                prof = profile_nodes(pre, everything, one, threads=threads, rounds=profile_rounds)
                slower = choose_excluded(prof.timings)
                excluded = sorted(set(excluded) | set(slower))
                static(out_path, excluded)
                selection = {"profiled_nodes": len(prof.timings), "kept_float": len(slower),
                             "kept_float_by_op": _count_ops(prof.timings, slower),
                             "profile_fp32_ms": prof.fp32_total_ms, "profile_int8_all_ms": prof.int8_total_ms,
                             "kept_float_nodes": slower}
                logger.info("int8 select auto: %d of %d quantizable nodes kept in float (int8 kernel slower on this "
                            "CPU)\n%s", len(slower), len(prof.timings), summary_table(prof, slower))
            elif mode == "static":
                static(out_path, excluded)
            else:
                quantize_dynamic(str(pre), str(out_path), per_channel=per_channel, weight_type=QuantType.QInt8)
        except Exception as e:  # noqa: BLE001 - surface onnxruntime's failure as ours
            raise ExportError(f"int8 {mode} quantization of {onnx_path.name} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from e
    int8 = make_session(out_path, threads=threads)
    batchless = batchless_indices(spec)
    ref = run_session(fp32, calibration, spec.input_names, batchless)
    got = run_session(int8, calibration, spec.input_names, batchless)
    k = spec.output_names.index(spec.primary_output)
    agree, total = agreement(ref[k], got[k], spec.class_axis)
    max_diff = float(np.max(np.abs(ref[k] - got[k])))
    lat_fp32 = lat_int8 = None
    if latency_rounds:
        one = {n: np.ascontiguousarray(a[:1]) for n, a in zip(spec.input_names, calibration)}
        times = interleaved_latency({"fp32": lambda: fp32.run(None, one), "int8": lambda: int8.run(None, one)},
                                    warmup=10, rounds=latency_rounds)
        lat_fp32, lat_int8 = times["fp32"], times["int8"]
    return QuantReport(out_path, mode, calibration_source if mode == "static" else "none (dynamic)",
                       len(calibration[0]), file_size(onnx_path), file_size(out_path), lat_fp32, lat_int8,
                       agree, total, max_diff,
                       {"format": quant_format, "per_channel": per_channel, "reduce_range": reduce_range,
                        "exclude_depthwise": exclude_depthwise, "select": select, "selection": selection}
                       if mode == "static" else
                       {"per_channel": per_channel})
