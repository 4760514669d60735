"""fp32 vs int8, side by side, per runtime: onnxruntime (QDQ, every node or ``--int8-select auto``) and, when the
``executorch`` extra is installed, XNNPACK through ExecuTorch (fp32 ``.pte`` vs PT2E int8 ``.pte``, every node the
quantizer annotates or ``select="auto"``: the operator kinds whose int8 kernels lose on this CPU kept in float).

int8 speed depends on the CPU's int8 dot-product instructions, so the script prints the CPU model and the flags that
matter (``avx512_vnni``, ``avx_vnni``, ``amx_int8``; ``avx2`` alone has no int8 dot product) before the table.
Batch 1, ``--threads`` threads in every runtime, every file of a model timed in alternation in one process
(``zoo.bench.interleaved_latency``, one untimed settle call before each timed one), so on a loaded machine the
ratios hold while the milliseconds do not. Weights are made informative (``export.probe``) and calibration is
synthetic: this measures speed, not accuracy (``zoo benchmark`` measures accuracy on real data).

    python benchmarks/int8_speed.py                                  # emov2_1m emov2_5m lwganet_l0, onnxruntime
    python benchmarks/int8_speed.py --xnnpack --models emov2_1m      # plus ExecuTorch fp32 / int8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from zoo.export.benchmark import cpu_description
from zoo.export.calib import synthetic_calibration
from zoo.export.evaluate import load_runner
from zoo.export.metadata import preprocessing
from zoo.export.pipeline import export_onnx_verified
from zoo.export.probe import make_informative
from zoo.export.quantize import file_size, quantize_int8

import zoo
from zoo.bench import interleaved_latency, peak_rss_mb


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:150] if str(e).strip() else ''}"


def bench_model(name: str, size: int, threads: int, rounds: int, xnnpack: bool, tmp: Path) -> dict[str, object]:
    """One model's files, timed together; a runtime whose export fails leaves its reason and the others' figures."""
    torch.set_num_threads(threads)
    model = zoo.create_model(name).eval()
    pre = preprocessing(model)
    shape = (pre["default_input_size"][0], size, size)
    make_informative(model, shape)
    ex, _ = export_onnx_verified(model, tmp / f"{name}.onnx", shape, n_random=1)
    calib = synthetic_calibration(shape, 1, 16, pre["mean"], pre["std"])
    files = {"ort fp32": ex.path}
    failed: dict[str, str] = {}
    kept: dict[str, object] = {}
    pte_kept: dict[str, object] = {}
    try:
        q_all = quantize_int8(ex.path, tmp / f"{name}.int8.onnx", ex.spec, calib, calibration_source="synthetic",
                              threads=threads, latency_rounds=0)
        q_auto = quantize_int8(ex.path, tmp / f"{name}.auto.int8.onnx", ex.spec, calib,
                               calibration_source="synthetic", threads=threads, latency_rounds=0, select="auto")
        files["ort int8 all"], files["ort int8 auto"] = q_all.path, q_auto.path
        kept = (q_auto.options or {}).get("selection") or {}
    except Exception as e:  # noqa: BLE001 - one runtime's failure is a cell, the row goes on
        failed["ort"] = _reason(e)
    if xnnpack:
        from zoo.export.executorch import to_pte
        from zoo.export.pt2e import to_pte_int8

        try:
            fp32_pte = to_pte(model, tmp / f"{name}.pte", ex.spec)
            files["xnnpack int8 all"] = to_pte_int8(model, tmp / f"{name}.int8.pte", ex.spec, calib,
                                                    calibration_source="synthetic").path
            auto = to_pte_int8(model, tmp / f"{name}.auto.int8.pte", ex.spec, calib, calibration_source="synthetic",
                               select="auto", threads=threads)
            files["xnnpack int8 auto"] = auto.path
            pte_kept = auto.selection.to_dict()
            files["xnnpack fp32"] = fp32_pte
        except Exception as e:  # noqa: BLE001
            failed["xnnpack"] = _reason(e)
    x = calib[0][:1]
    runners = {k: load_runner(p, threads) for k, p in files.items()}
    fns = {k: (lambda r=r: r([x])) for k, r in runners.items()}
    times = interleaved_latency(fns, warmup=5, rounds=rounds, settle=1)
    return {"model": name, "size": size, "threads": threads, "ms": times,
            "mb": {k: file_size(p) / 1e6 for k, p in files.items()}, "failed": failed,
            "kept_float": kept.get("kept_float_by_op", {}), "kept_float_nodes": kept.get("kept_float", 0),
            "profiled_nodes": kept.get("profiled_nodes", 0), "pte_kept_float": pte_kept}


def _pair(ms: dict[str, float], fp32: str, int8: list[str]) -> tuple[str, str]:
    times = " / ".join(f"{ms[k]:.2f}" for k in [fp32, *int8])
    ratios = " / ".join(f"{ms[fp32] / ms[k]:.2f}x" for k in int8)
    return times, ratios


def print_row(r: dict) -> None:
    ms, failed = r["ms"], r.get("failed", {})
    ort, ratio = (f"failed: {failed['ort']}", "-") if "ort" in failed else \
        _pair(ms, "ort fp32", ["ort int8 all", "ort int8 auto"])
    xnn = xr = "-"
    if "xnnpack" in failed:
        xnn = f"failed: {failed['xnnpack']}"
    elif "xnnpack fp32" in ms:
        xnn, xr = _pair(ms, "xnnpack fp32", ["xnnpack int8 all", "xnnpack int8 auto"])
    kept = ", ".join(f"{k} {v}" for k, v in sorted(r["kept_float"].items())) or "none"
    pte = r.get("pte_kept_float") or {}
    pte_kept = ", ".join(f"{k} {v}" for k, v in (pte.get("float_nodes") or {}).items()) or "none"
    print(f"| {r['model']} | {r['size']} | {ort} | {ratio} | {xnn} | {xr} | "
          f"{r['kept_float_nodes']}/{r['profiled_nodes']}: {kept} | {pte_kept} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["emov2_1m", "emov2_5m", "lwganet_l0"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--xnnpack", action="store_true", help="also ExecuTorch fp32 / PT2E int8 (executorch extra)")
    p.add_argument("--json-out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cores']} logical cores; int8-relevant flags: "
          f"{', '.join(cpu['int8_flags']) or 'none'}")
    print(f"torch {torch.__version__}; batch 1, {args.threads} thread(s), {args.rounds} interleaved rounds; "
          "ratios are fp32 time / int8 time (> 1: int8 faster)\n")
    print("| model | input | ORT ms fp32 / int8 all / int8 auto | ORT fp32/int8 all / auto | XNNPACK ms fp32 / int8 "
          "all / int8 auto | XNNPACK fp32/int8 all / auto | ORT auto: nodes kept float (by op) "
          "| XNNPACK auto: nodes kept float |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            t0 = time.perf_counter()
            try:
                r = bench_model(name, args.size, args.threads, args.rounds, args.xnnpack, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one model's failure is a line, the table goes on
                print(f"| {name} | {args.size} | failed: {type(e).__name__}: {str(e).splitlines()[0][:150]} |")
                continue
            rows.append(r)
            print_row(r)
            print(f"  ({name}: {time.perf_counter() - t0:.0f} s, peak RSS {peak_rss_mb():.0f} MiB)", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
