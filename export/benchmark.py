"""``zoo benchmark CHECKPOINT``: which file to ship -- each export format's size, real metric and latency side by side.

For one trained checkpoint it writes each requested format (default: every one whose runtime is installed), scores
each file in its own runtime on the checkpoint's real validation split with the task's metric
(:mod:`export.evaluate`, the same accumulators as ``zoo eval``), and times all of them, PyTorch eager included as
the reference row, at batch 1 in one process, in alternation (:func:`zoo.bench.interleaved_latency`), so load on a
shared machine slows every row alike. A format that fails (a missing runtime, an exporter error, a parity failure)
becomes a row carrying its one-line reason; the table is always written: ``benchmark.csv``, ``benchmark.json`` and
``benchmark.png`` (metric against latency).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import zoo
from zoo.bench import interleaved_latency
from zoo.checkpoint import atomic_write_bytes
from zoo.errors import CheckpointError

from .evaluate import ExportedModel, build_eval_data, evaluate_module, evaluation_config
from .quantize import file_size

#: every row ``zoo benchmark`` knows, in table order; ``pytorch`` is the reference and always runs
FORMATS = ("pytorch", "onnx", "int8.onnx", "ort", "int8.ort", "pte", "int8.pte", "tflite")
#: modules each format needs, and the extra that brings them
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "onnx": (("onnxruntime", "onnx"), "export"),
    "int8.onnx": (("onnxruntime", "onnx"), "export"),
    "ort": (("onnxruntime", "onnx"), "export"),
    "int8.ort": (("onnxruntime", "onnx"), "export"),
    "pte": (("executorch",), "executorch"),
    "int8.pte": (("executorch",), "executorch"),
    "tflite": (("litert_torch", "ai_edge_litert"), "tflite"),
}
RUNTIME = {"pytorch": "pytorch eager", "onnx": "onnxruntime", "int8.onnx": "onnxruntime", "ort": "onnxruntime",
           "int8.ort": "onnxruntime", "pte": "executorch (xnnpack)", "int8.pte": "executorch (xnnpack)",
           "tflite": "litert"}


def missing_runtime(fmt: str) -> str | None:
    """Why ``fmt`` cannot run here (a module of its extra is not installed), or ``None``."""
    if fmt == "pytorch":
        return None
    modules, extra = REQUIREMENTS[fmt]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install 'lightzoo[{extra}]')" if missing else None


def default_formats() -> list[str]:
    return [f for f in FORMATS if missing_runtime(f) is None]


@dataclass
class BenchmarkRow:
    """One format: its file, the task metric on the validation split and its change vs PyTorch, batch-1 latency."""

    format: str
    runtime: str
    threads: int
    metric: str
    status: str = "ok"  # ok | failed
    reason: str | None = None
    file: str | None = None
    size_bytes: int | None = None
    value: float | None = None
    change_points: float | None = None  # (value - PyTorch's) in percentage points
    latency_ms: float | None = None
    speedup_vs_pytorch: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkResult:
    checkpoint: str
    model: str
    task: str
    dataset: str
    num_images: int
    metric: str
    rows: list[BenchmarkRow]
    files: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        head = ["format", "runtime", "size MB", self.metric, "change (pts)", "latency ms", "x PyTorch", "threads",
                "note"]
        lines = [head]
        for r in self.rows:
            lines.append([
                r.format, r.runtime, _fmt(r.size_bytes / 1e6 if r.size_bytes else None, ".2f"),
                _fmt(100 * r.value if r.value is not None else None, ".2f"),
                _fmt(r.change_points, "+.2f"), _fmt(r.latency_ms, ".3f"), _fmt(r.speedup_vs_pytorch, ".2f"),
                str(r.threads), r.reason or ""])
        widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in lines)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _checkpoint_config(checkpoint: str | os.PathLike, overrides: Sequence[str]) -> tuple[dict[str, Any], Any]:
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist")
    meta = zoo.read_metadata(checkpoint)
    if meta is None:
        raise CheckpointError(f"{str(checkpoint)!r} has no LightZoo sidecar (.json): zoo benchmark needs a "
                              "checkpoint written by zoo train (it names the dataset and preprocessing)")
    sidecar = {"task": meta.get("task", "classification"), "model": meta["model"], "file": Path(checkpoint).name,
               "input_size": meta.get("input_size") or [3, 224, 224], "training_config": meta.get("config"),
               "preprocessing": {"mean": meta.get("mean"), "std": meta.get("std")}}
    return meta, evaluation_config(sidecar, overrides)


ONNX_FAMILY = ("onnx", "int8.onnx", "ort", "int8.ort")


def _export(fmt: str, checkpoint: str, out: Path, name: str, int8_select: str, wanted: Sequence[str],
            pte_int8_select: str = "auto", threads: int | None = None) -> dict[str, Path]:
    """Write the files for ``fmt`` and its companions; returns {format: path} for what was written.

    The ONNX family comes from one ``export_model`` call (.onnx, then .int8.onnx / .ort / .int8.ort from it) with
    what ``wanted`` asks for; when that fails, ``fmt`` alone is tried, so one failing companion (say the .ort
    conversion) does not take the plain .onnx row down with it.
    """
    from .pipeline import export_model

    quiet = lambda _msg: None  # noqa: E731 - the pipeline's own chatter; the benchmark logs its progress
    if fmt in ONNX_FAMILY:
        family = [f for f in ONNX_FAMILY if f in wanted]

        def attempt(fmts: Sequence[str]) -> dict[str, Path]:
            res = export_model(checkpoint, out, format="ort" if any("ort" in f for f in fmts) else "onnx",
                               name=name, int8=any(f.startswith("int8") for f in fmts), int8_select=int8_select,
                               latency_rounds=0, log=quiet)
            written = {Path(p).resolve() for p in res.files}
            found = {f: out / f"{name}.{f}" for f in ONNX_FAMILY}
            return {k: p for k, p in found.items() if p.resolve() in written and k in fmts}

        try:
            return attempt(family)
        except Exception:  # noqa: BLE001 - retried alone below; its own error is the one reported
            if family == [fmt]:
                raise
        return attempt([fmt])
    if fmt == "int8.pte":
        from .pt2e import export_pte_int8

        return {fmt: export_pte_int8(checkpoint, out / f"{name}.int8.pte", select=pte_int8_select, threads=threads,
                                     log=quiet)}
    res = export_model(checkpoint, out, format=fmt, name=name, log=quiet)
    return {fmt: res.files[0]}


def run_benchmark(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, formats: Sequence[str] | None = None,
                  overrides: Sequence[str] = (), threads: int = 1, rounds: int = 30, warmup: int = 5,
                  limit: int | None = None, int8_select: str = "all", pte_int8_select: str = "auto",
                  log: Callable[[str], None] = print) -> BenchmarkResult:
    """Export, score and time every format in ``formats`` (default :func:`default_formats`); see the module doc."""
    checkpoint = str(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [f for f in FORMATS if f in (formats or default_formats()) and f != "pytorch"]
    unknown = sorted(set(formats or []) - set(FORMATS))
    if unknown:
        raise CheckpointError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    torch.set_num_threads(threads)
    meta, cfg = _checkpoint_config(checkpoint, overrides)
    task, data = build_eval_data(cfg)
    metric = task.metric
    from .pt2e import is_qat_checkpoint

    qat = is_qat_checkpoint(meta)
    if qat:  # the fake-quantized training graph is its PyTorch form; its file is the int8 .pte
        from .pt2e import qat_training_graph

        model = qat_training_graph(checkpoint, meta)
    else:
        model = zoo.create_model(checkpoint_path=checkpoint).eval()
    name = f"{meta['model']}_{Path(checkpoint).stem}"
    steps = 1 + len(wanted)
    log(f"[1/{steps}] pytorch: scoring on {cfg.data.dataset} {cfg.data.val_split} "
        f"({len(data.val) if limit is None else min(limit, len(data.val))} images)")
    t0 = time.perf_counter()
    ref = evaluate_module(model, cfg, task, data, limit)
    log(f"      {metric} {100 * ref[metric]:.2f} ({time.perf_counter() - t0:.1f} s)")
    rows = [BenchmarkRow("pytorch", RUNTIME["pytorch"] + (" (QAT fake-quant)" if qat else ""), threads, metric,
                         value=ref[metric], change_points=0.0, metrics=ref)]
    runners: dict[str, ExportedModel] = {}
    files: dict[str, Path] = {}
    for i, fmt in enumerate(wanted, start=2):
        row = BenchmarkRow(fmt, RUNTIME[fmt], threads, metric)
        rows.append(row)
        why = missing_runtime(fmt)
        if qat and fmt != "int8.pte" and why is None:
            why = "a quantization-aware-trained checkpoint exports as int8.pte (the quantizers it learned)"
        if why is None and fmt not in files:
            log(f"[{i}/{steps}] {fmt}: exporting" + (" (with its ONNX companions)" if fmt in ONNX_FAMILY else ""))
            try:
                files.update(_export(fmt, checkpoint, out, name, int8_select, wanted, pte_int8_select, threads))
                if fmt not in files:
                    why = "the exporter wrote no file for it"
            except Exception as e:  # noqa: BLE001 - one failing format is a row, not the end of the table
                why = _one_line(e)
        if why is not None:
            row.status, row.reason = "failed", why
            log(f"[{i}/{steps}] {fmt}: failed: {why}")
            continue
        path = files[fmt]
        row.file, row.size_bytes = path.name, file_size(path)
        log(f"[{i}/{steps}] {fmt}: scoring {path.name}")
        try:
            runner = ExportedModel(path, threads=threads)
            t0 = time.perf_counter()
            m = evaluate_module(runner, cfg, task, data, limit)
        except Exception as e:  # noqa: BLE001
            row.status, row.reason = "failed", _one_line(e)
            log(f"      failed: {row.reason}")
            continue
        row.metrics, row.value = m, m[metric]
        row.change_points = 100 * (m[metric] - ref[metric])
        runners[fmt] = runner
        log(f"      {metric} {100 * row.value:.2f} ({row.change_points:+.2f} pts, {time.perf_counter() - t0:.1f} s)")
    log(f"timing batch 1: {1 + len(runners)} rows interleaved, {rounds} rounds, {threads} thread(s)")
    for fmt, ms in _latencies(model, runners, meta, cfg, data, threads, rounds, warmup).items():
        row = next(r for r in rows if r.format == fmt)
        row.latency_ms = ms
    base = rows[0].latency_ms
    for r in rows:
        if r.latency_ms and base:
            r.speedup_vs_pytorch = base / r.latency_ms
    result = BenchmarkResult(checkpoint, meta["model"], cfg.task, cfg.data.dataset, ref["num_images"], metric, rows)
    result.files = write_outputs(result, out)
    return result


def _latencies(model: torch.nn.Module, runners: dict[str, ExportedModel], meta: dict[str, Any], cfg: Any, data: Any,
               threads: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median batch-1 latency of the exported graph's computation in each runtime, in alternation."""
    from .spec import build_adapter, build_spec, normalize_input_size

    size = normalize_input_size(meta.get("input_size") or [3, cfg.data.img_size, cfg.data.img_size])
    spec = build_spec(cfg.task, size, False, model)
    adapter = build_adapter(model, spec)
    from .evaluate import _sample_images

    sample = [x.float() for x in _sample_images(data.val[0], len(spec.input_names))]
    if tuple(sample[0].shape) != tuple(size):  # detection: any image size; the graph takes its fixed size
        sample = [torch.nn.functional.interpolate(x[None], size=size[-2:], mode="bilinear")[0] for x in sample]
    tensors = [x[None].contiguous() for x in sample]
    arrays = [t.numpy() for t in tensors]
    fns: dict[str, Callable[[], object]] = {"pytorch": lambda: adapter(*tensors)}
    for fmt, runner in runners.items():
        fns[fmt] = lambda r=runner.run_one: r(arrays)
    torch.set_num_threads(threads)
    return interleaved_latency(fns, warmup=warmup, rounds=rounds, settle=1)


def write_outputs(result: BenchmarkResult, out: Path) -> dict[str, Path]:
    """``benchmark.csv``, ``benchmark.json`` and ``benchmark.png`` (metric against latency) in ``out``."""
    keys = ["format", "runtime", "status", "reason", "file", "size_bytes", "metric", "value", "change_points",
            "latency_ms", "speedup_vs_pytorch", "threads"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for r in result.rows:
        writer.writerow(asdict(r))
    paths = {"csv": out / "benchmark.csv", "json": out / "benchmark.json", "png": out / "benchmark.png"}
    atomic_write_bytes(paths["csv"], lambda tmp: Path(tmp).write_text(buf.getvalue()))
    doc = {"checkpoint": result.checkpoint, "model": result.model, "task": result.task, "dataset": result.dataset,
           "num_images": result.num_images, "metric": result.metric, "cpu": cpu_description(),
           "versions": _versions(), "rows": [asdict(r) for r in result.rows]}
    text = json.dumps(doc, indent=2, default=str)
    atomic_write_bytes(paths["json"], lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write_bytes(paths["png"], lambda tmp: _plot(result, tmp))
    return paths


def _plot(result: BenchmarkResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in result.rows:
        if r.value is None or r.latency_ms is None:
            continue
        ax.scatter(r.latency_ms, 100 * r.value, s=30)
        ax.annotate(r.format, (r.latency_ms, 100 * r.value), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("batch-1 latency, median (ms)")
    ax.set_ylabel(f"{result.metric} on {result.dataset} (%)")
    ax.set_title(f"{result.model}: metric vs latency per format", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def cpu_description() -> dict[str, Any]:
    """CPU model and the SIMD flags that decide int8 speed (from /proc/cpuinfo; empty elsewhere)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return {"model": model, "cores": os.cpu_count(), "int8_flags": [f for f in wanted if f in flags]}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"lightzoo": zoo.__version__, "torch": torch.__version__}
    for dist in ("onnxruntime", "executorch", "ai-edge-litert"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out
