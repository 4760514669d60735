"""Eager PyTorch vs onnxruntime fp32 vs onnxruntime int8 (static QDQ): median latency and size on disk.

Batch 1, ``--threads`` threads for both runtimes, the three measured in alternation in one process
(``zoo.bench.interleaved_latency``) so a busy machine slows them alike. 224x224 (LightM-UNet: 256x256); 3D models
are skipped. Every ONNX file is parity-checked against PyTorch before it is timed (on weights made informative by
``export.probe``; the exporter falls back to the other one when its graph does not match). int8 is calibrated on
synthetic images (no dataset needed), which affects its accuracy, not its speed.

    python benchmarks/export_latency.py                      # every registered backbone
    python benchmarks/export_latency.py --models 'emov2_1m' 'lwganet_l0' --peers mobilenetv3_large_100
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import zoo
from export.calib import synthetic_calibration
from export.metadata import preprocessing
from export.parity import make_session
from export.pipeline import export_onnx_verified
from export.probe import make_informative
from export.quantize import file_size, quantize_int8
from zoo.bench import interleaved_latency

SIZE_OVERRIDES = {"lightm_unet": 256}  # family -> input size (LightM-UNet's nnU-Net patch size)


def bench_one(name: str, size: int, threads: int, rounds: int, exporter: str, tmp: Path) -> dict[str, object]:
    torch.set_num_threads(threads)
    model = zoo.create_model(name).eval()
    pre = preprocessing(model)
    c = pre["default_input_size"][0]
    make_informative(model, (c, size, size))  # untrained weights: make parity meaningful (export.probe)
    ex, parity = export_onnx_verified(model, tmp / f"{name}.onnx", (c, size, size), exporter=exporter, n_random=2)
    calib = synthetic_calibration(ex.spec.input_size, 1, 16, pre["mean"], pre["std"])
    q = quantize_int8(ex.path, tmp / f"{name}.int8.onnx", ex.spec, calib, calibration_source="synthetic",
                      threads=threads, latency_rounds=0)
    fp32, int8 = make_session(ex.path, threads), make_session(q.path, threads)
    x = np.random.default_rng(0).standard_normal((1, c, size, size)).astype(np.float32)
    xt = torch.from_numpy(x)
    times = interleaved_latency({"eager": lambda: model(xt), "fp32": lambda: fp32.run(None, {"input": x}),
                                 "int8": lambda: int8.run(None, {"input": x})}, warmup=5, rounds=rounds)
    return {"model": name, "size": size, "exporter": ex.exporter, "parity": parity.max_abs_diff,
            "eager": times["eager"], "fp32": times["fp32"], "int8": times["int8"],
            "mb_fp32": file_size(ex.path) / 1e6, "mb_int8": file_size(q.path) / 1e6, "agree": q.agreement}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["*"], help="zoo model names or patterns (default: all)")
    p.add_argument("--peers", nargs="*", default=["mobilenetv3_large_100"], help="timm models for reference")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="legacy",
                   help="exporter tried first (legacy: fast; falls back to dynamo when its graph is wrong)")
    args = p.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    warnings.simplefilter("ignore")
    names = [n for n in zoo.list_models() if any(fnmatch.fnmatch(n, pat) for pat in args.models)]
    rows = []
    header = ("| model | input | exporter | eager ms | ORT fp32 ms | ORT int8 ms | fp32 / eager | int8 / fp32 | "
              "fp32 MB | int8 MB | int8 top-1 agree (synthetic) |")
    print(header + "\n|" + "---|" * 11, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names + list(args.peers):
            model_family = zoo.registry._ZOO_MODELS.get(name, "timm")
            if getattr(zoo.create_model(name), "spatial_dims", 2) == 3:
                print(f"| {name} | 3D model: skipped (2D benchmark) |", flush=True)
                continue
            size = SIZE_OVERRIDES.get(model_family, args.size)
            try:
                r = bench_one(name, size, args.threads, args.rounds, args.exporter, Path(tmp))
            except Exception as e:  # noqa: BLE001 - report the row and go on with the other models
                print(f"| {name} | {size} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} |", flush=True)
                continue
            rows.append(r)
            print(f"| {r['model']} | {size}² | {r['exporter']} | {r['eager']:.1f} | {r['fp32']:.1f} | {r['int8']:.1f} "
                  f"| {r['eager'] / r['fp32']:.2f}x | {r['fp32'] / r['int8']:.2f}x | {r['mb_fp32']:.1f} | "
                  f"{r['mb_int8']:.1f} | {100 * r['agree']:.0f}% |", flush=True)
    missed = [r["model"] for r in rows if r["eager"] / r["fp32"] < 2.0]
    slow8 = [r["model"] for r in rows if r["fp32"] / r["int8"] < 1.5]
    print(f"\nORT fp32 >= 2x eager: {'all' if not missed else 'not met for ' + ', '.join(missed)}", file=sys.stderr)
    print(f"ORT int8 >= 1.5x fp32: {'all' if not slow8 else 'not met for ' + ', '.join(slow8)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
