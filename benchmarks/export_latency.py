"""Eager PyTorch vs onnxruntime fp32 vs onnxruntime int8: median latency, ratios and size on disk, one table.

Batch 1, ``--threads`` threads for both runtimes (2 by default), the three measured in alternation in one process
(``zoo.bench.interleaved_latency``) so a busy machine slows them alike, each timed call after one untimed call of
the same runtime (the steady state an app sees). onnxruntime runs with its default thread pool, whose workers
spin inside a run, parked when the run returns (``session.force_spinning_stop``) so they cannot steal the cores
of the runtime timed next; ``--no-ort-spin`` turns spinning off and the settle calls with it (the earlier
method; slower onnxruntime figures). 224x224 (LightM-UNet: 256x256); 3D models
are skipped. Every ONNX file is parity-checked against PyTorch before it is timed (on weights made informative by
``export.probe``; the exporter falls back to the other one when its graph does not match). int8 is static QDQ
calibrated on synthetic images (no dataset needed; this affects its accuracy, not its speed), with the
``--int8-*`` options of ``export.quantize_int8``. ``--int8-select auto`` keeps in float the nodes whose int8 kernel
profiled slower on this machine (``export.int8_select``; the per-node table goes to stderr); ``--int8-both`` times
the all-int8 and the auto-selected model side by side in the same interleaved loop (four columns more).

Resumable: each model's row is cached as JSON in ``--cache`` (keyed by model, size, threads, rounds, int8 options
and library versions); a rerun prints cached rows at once and measures only what is missing (``--refresh``
re-measures). The whole registry takes about 10 minutes on a quiet 2-core machine:

    python benchmarks/export_latency.py --markdown-out /tmp/export_latency.md        # every registered backbone
    python benchmarks/export_latency.py --models emov2_1m lwganet_l0 --peers           # two models, no peers
    python benchmarks/export_latency.py --skip 'lightm_unet*'                          # without the slow one
    python benchmarks/export_latency.py --models emov2_1m emov2_5m lwganet_l0 lwganet_l2 phc_resnet18 \
        --int8-both --refresh                                                          # int8 all vs auto
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from zoo.export.calib import synthetic_calibration
from zoo.export.metadata import preprocessing
from zoo.export.parity import make_session
from zoo.export.pipeline import export_onnx_verified
from zoo.export.probe import make_informative
from zoo.export.quantize import file_size, quantize_int8

import zoo
from zoo.bench import interleaved_latency

SIZE_OVERRIDES = {"lightm_unet": 256}  # family -> input size (LightM-UNet's nnU-Net patch size)
HEADER = ("| model | input | exporter | eager ms | ORT fp32 ms | ORT int8 ms | eager / fp32 | fp32 / int8 | "
          "fp32 MB | int8 MB | int8 top-1 agree (synthetic) |")


def bench_one(name: str, size: int, threads: int, rounds: int, exporter: str, int8_opts: dict[str, object],
              tmp: Path, spin: bool = True) -> dict[str, object]:
    torch.set_num_threads(threads)
    model = zoo.create_model(name).eval()
    pre = preprocessing(model)
    c = pre["default_input_size"][0]
    make_informative(model, (c, size, size))  # untrained weights: make parity meaningful (export.probe)
    t0 = time.perf_counter()
    ex, parity = export_onnx_verified(model, tmp / f"{name}.onnx", (c, size, size), exporter=exporter, n_random=2)
    t_export = time.perf_counter() - t0
    calib = synthetic_calibration(ex.spec.input_size, 1, 16, pre["mean"], pre["std"])
    opts = dict(int8_opts)
    both = opts.get("select") == "both"
    opts["select"] = "all" if both else opts.get("select", "all")
    q = quantize_int8(ex.path, tmp / f"{name}.int8.onnx", ex.spec, calib, calibration_source="synthetic",
                      threads=threads, latency_rounds=0, **opts)  # type: ignore[arg-type]
    qa = (quantize_int8(ex.path, tmp / f"{name}.int8auto.onnx", ex.spec, calib, calibration_source="synthetic",
                        threads=threads, latency_rounds=0, **{**opts, "select": "auto"})  # type: ignore[arg-type]
          if both else None)
    # spin=True: onnxruntime's default thread pool, whose workers busy-wait between the parallel parts of a run
    # (what an app gets); parked when a run returns, or they would steal the cores of the runtime timed next
    # (eager emov2_1m: 7.7 s per image next to sessions left spinning on the loaded machine, 0.13 s alone). Each
    # timed call follows one untimed call of the same runtime (settle=1): the steady state of an app that runs one
    # runtime call after call. --no-ort-spin: no spinning at all, no settle calls (the earlier method).
    def session(path: Path):
        return make_session(path, threads, spin=spin, stop_spinning_after_run=spin)

    fp32, int8 = session(ex.path), session(q.path)
    x = np.random.default_rng(0).standard_normal((1, c, size, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    fns = {"eager": lambda: model(xt), "fp32": lambda: fp32.run(None, {"input": x}),
           "int8": lambda: int8.run(None, {"input": x})}
    if qa is not None:
        auto = session(qa.path)
        fns["int8_auto"] = lambda: auto.run(None, {"input": x})
    with torch.no_grad():
        times = interleaved_latency(fns, warmup=5, rounds=rounds, settle=1 if spin else 0)
    r = {"model": name, "size": size, "exporter": ex.exporter, "parity": parity.max_abs_diff, "ort_spin": spin,
         "eager": times["eager"], "fp32": times["fp32"], "int8": times["int8"],
         "mb_fp32": file_size(ex.path) / 1e6, "mb_int8": file_size(q.path) / 1e6, "agree": q.agreement,
         "export_s": t_export, "int8_options": int8_opts, "int8_selection": (q.options or {}).get("selection")}
    if qa is not None:
        r.update({"int8_auto": times["int8_auto"], "mb_int8_auto": file_size(qa.path) / 1e6,
                  "agree_auto": qa.agreement, "int8_selection": (qa.options or {}).get("selection")})
    return r


HEADER_AUTO = " ORT int8 auto ms | fp32 / int8 auto | int8 auto MB | int8 auto agree |"


def row(r: dict[str, object]) -> str:
    line = (f"| {r['model']} | {r['size']}² | {r['exporter']} | {r['eager']:.1f} | {r['fp32']:.1f} | "
            f"{r['int8']:.1f} | {r['eager'] / r['fp32']:.2f}x | {r['fp32'] / r['int8']:.2f}x | "
            f"{r['mb_fp32']:.1f} | {r['mb_int8']:.1f} | {100 * r['agree']:.0f}% |")
    if "int8_auto" in r:
        line += (f" {r['int8_auto']:.1f} | {r['fp32'] / r['int8_auto']:.2f}x | {r['mb_int8_auto']:.1f} | "
                 f"{100 * r['agree_auto']:.0f}% |")
    return line


def cache_key(name: str, size: int, args: argparse.Namespace, int8_opts: dict[str, object]) -> str:
    versions = (torch.__version__, onnxruntime.__version__, zoo.__version__)
    text = json.dumps([name, size, args.threads, args.rounds, args.exporter, int8_opts, versions,
                       "spin-stop-settle1" if args.ort_spin else "nospin"],
                      sort_keys=True)
    return f"{name}_{size}_{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["*"], help="zoo model names or patterns (default: all)")
    p.add_argument("--skip", nargs="*", default=[], help="model names or patterns to leave out")
    p.add_argument("--peers", nargs="*", default=["mobilenetv3_large_100"], help="timm models for reference "
                                                                                 "(--peers alone: none)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="legacy",
                   help="exporter tried first (legacy: fast; falls back to dynamo when its graph is wrong)")
    p.add_argument("--int8-format", choices=("qdq", "qoperator"), default="qdq")
    p.add_argument("--int8-reduce-range", action="store_true")
    p.add_argument("--int8-exclude-depthwise", action="store_true")
    p.add_argument("--int8-select", choices=("all", "auto"), default="all",
                   help="auto: keep in float the nodes whose int8 kernel profiles slower (export.int8_select)")
    p.add_argument("--int8-both", action="store_true",
                   help="time int8 --int8-select all AND auto in the same interleaved loop (extra column)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lightzoo_export_latency"),
                   help="folder of per-model result rows (resume)")
    p.add_argument("--refresh", action="store_true", help="re-measure models that have a cached row")
    p.add_argument("--markdown-out", help="also write the table to this file")
    p.add_argument("--no-ort-spin", dest="ort_spin", action="store_false",
                   help="onnxruntime threads that sleep between runs, timed without settle calls (for a loaded "
                        "machine, where spinning threads steal PyTorch's cores; slower than onnxruntime's default)")
    args = p.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    warnings.simplefilter("ignore")
    int8_opts: dict[str, object] = {"quant_format": args.int8_format, "reduce_range": args.int8_reduce_range,
                                    "exclude_depthwise": args.int8_exclude_depthwise}
    if args.int8_select != "all" or args.int8_both:  # absent for the default: earlier cached rows stay valid
        int8_opts["select"] = "both" if args.int8_both else args.int8_select
    names = [n for n in zoo.list_models() if any(fnmatch.fnmatch(n, pat) for pat in args.models)]
    names = [n for n in names + list(args.peers) if not any(fnmatch.fnmatch(n, pat) for pat in args.skip)]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    both = int8_opts.get("select") == "both"
    lines = [HEADER + (HEADER_AUTO if both else ""), "|" + "---|" * (15 if both else 11)]
    print("\n".join(lines), flush=True)
    rows = []
    for name in names:
        family = zoo.registry._ZOO_MODELS.get(name, "timm")
        if getattr(zoo.create_model(name), "spatial_dims", 2) == 3:
            print(f"3D model {name}: skipped (2D benchmark)", file=sys.stderr)
            continue
        size = SIZE_OVERRIDES.get(family, args.size)
        cached = cache / cache_key(name, size, args, int8_opts)
        if cached.exists() and not args.refresh:
            r = json.loads(cached.read_text())
        else:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    r = bench_one(name, size, args.threads, args.rounds, args.exporter, int8_opts, Path(tmp),
                                  spin=args.ort_spin)
            except Exception as e:  # noqa: BLE001 - report the row and go on with the other models
                line = f"| {name} | {size}² | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} |"
                print(line, flush=True)
                lines.append(line)
                continue
            cached.write_text(json.dumps(r, indent=1))
        rows.append(r)
        lines.append(row(r))
        print(lines[-1], flush=True)
    if args.markdown_out:
        Path(args.markdown_out).write_text("\n".join(lines) + "\n")
    missed = [r["model"] for r in rows if r["eager"] / r["fp32"] < 2.0]
    slow8 = [r["model"] for r in rows if r["fp32"] / r.get("int8_auto", r["int8"]) < 1.5]
    print(f"\n{args.threads} threads, batch 1, int8 options {int8_opts}, onnxruntime spinning "
          f"{'on during runs, settle=1' if args.ort_spin else 'off'}; cache {cache}", file=sys.stderr)
    print(f"ORT fp32 >= 2x eager: {'all' if not missed else 'not met for ' + ', '.join(missed)}", file=sys.stderr)
    print(f"ORT int8 >= 1.5x fp32: {'all' if not slow8 else 'not met for ' + ', '.join(slow8)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
