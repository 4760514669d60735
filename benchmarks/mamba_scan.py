"""Selective-scan speed, LightM-UNet inference memory, and LightM-UNet ONNX export (issue 4).

    python benchmarks/mamba_scan.py                 # everything (the ONNX part exports at 256², minutes on 2 cores)
    python benchmarks/mamba_scan.py --only speed    # chunked vs sequential scan, L=4096, d_inner=512, N=16
    python benchmarks/mamba_scan.py --only memory   # peak RSS of one 256² lightm_unet_2d forward (fresh process)
    python benchmarks/mamba_scan.py --only onnx     # export, node count, onnxruntime vs PyTorch at 256² and 192²

Speeds are measured interleaved in one process (``zoo.bench.interleaved_latency``) and reported as ratios, since
this machine is shared. Memory is measured in a child process so nothing else inflates its peak.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from zoo.bench import interleaved_latency
from zoo.layers.selective_scan import selective_scan_chunked, selective_scan_sequential


def bench_speed(seqlen: int = 4096, d_inner: int = 512, d_state: int = 16, rounds: int = 3) -> dict[str, float]:
    torch.manual_seed(0)
    u = torch.randn(1, d_inner, seqlen)
    delta = torch.randn(1, d_inner, seqlen)
    a = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # S4D-real init
    b = torch.randn(1, d_state, seqlen)
    c = torch.randn(1, d_state, seqlen)
    d = torch.ones(d_inner)
    z = torch.randn(1, d_inner, seqlen)
    bias = torch.randn(d_inner) - 4.0  # softplus(bias) ~ mamba_ssm's dt init range
    args = (u, delta, a, b, c, d, z, bias, True)
    out = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        t = interleaved_latency({
            "sequential": lambda: selective_scan_sequential(*args),
            "chunked": lambda: selective_scan_chunked(*args),
        }, warmup=1, rounds=rounds)
        print(f"scan L={seqlen} d_inner={d_inner} N={d_state} threads={threads}: sequential {t['sequential']:.0f} ms, "
              f"chunked {t['chunked']:.0f} ms -> {t['sequential'] / t['chunked']:.1f}x")
        out[f"threads{threads}"] = t["sequential"] / t["chunked"]
    return out


_MEMORY_CHILD = r"""
import json, sys, torch, zoo
from zoo.bench import peak_rss_mb
from zoo.layers.mamba import set_scan_impl
size, impl = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
m = zoo.create_model("lightm_unet_2d").eval()
set_scan_impl(m, impl)
x = torch.randn(1, 3, size, size)
base = peak_rss_mb()
with torch.inference_mode():
    m(x)
print(json.dumps({"before_forward_mb": base, "peak_mb": peak_rss_mb()}))
"""


def bench_memory(size: int = 256) -> dict[str, float]:
    res = {}
    for impl in ("chunked",):
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(size), impl], capture_output=True, text=True,
                              check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        res[impl] = r
        print(f"lightm_unet_2d {size}x{size} forward ({impl} scan): peak RSS {r['peak_mb']:.0f} MiB "
              f"(model built: {r['before_forward_mb']:.0f} MiB; "
              f"forward adds {r['peak_mb'] - r['before_forward_mb']:.0f})")
    naive = size * size * 64 * 16 * 4 / 2 ** 20
    print(f"for scale: one first-stage layer's full state tensor L·d_inner·N·4 B = {naive:.0f} MiB "
          f"(the network has 21 Mamba layers)")
    return res


def bench_onnx(size: int = 256, second: int = 192, dynamic: bool = False) -> dict[str, object]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    import zoo
    from zoo.layers.mamba import set_scan_impl

    torch.manual_seed(0)
    model = zoo.create_model("lightm_unet_2d").eval()
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lightm_unet_2d.onnx")
        set_scan_impl(model, "export")
        t0 = time.perf_counter()
        kw = {"dynamic_shapes": {"x": {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}}} if dynamic else {}
        torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"], output_names=["logits"],
                          optimize=True, **kw)
        export_s = time.perf_counter() - t0
        graph = onnx.load(path).graph
        ops = collections.Counter(n.op_type for n in graph.node)
        set_scan_impl(model, "auto")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        res: dict[str, object] = {"export_s": export_s, "nodes": len(graph.node), "scan_nodes": ops.get("Scan", 0),
                                  "loop_nodes": ops.get("Loop", 0)}
        print(f"export {export_s:.0f} s; {len(graph.node)} top-level nodes, {ops.get('Scan', 0)} Scan, "
              f"{ops.get('Loop', 0)} Loop; most common: {ops.most_common(6)}")
        for s in (size, second) if dynamic else (size,):
            xi = torch.randn(1, 3, s, s)
            with torch.inference_mode():
                t0 = time.perf_counter()
                ref = model(xi).numpy()
                torch_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = sess.run(None, {"x": xi.numpy()})[0]
            ort_s = time.perf_counter() - t0
            diff = float(np.abs(got - ref).max())
            res[f"max_abs_diff_{s}"] = diff
            print(f"{s}x{s}: onnxruntime vs PyTorch max abs diff {diff:.2e} "
                  f"(ORT {ort_s:.1f} s, PyTorch {torch_s:.1f} s)")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("speed", "memory", "onnx"), action="append")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the memory/onnx parts")
    p.add_argument("--dynamic", action="store_true", help="export with dynamic H/W and also run a second size")
    args = p.parse_args(argv)
    parts = args.only or ["speed", "memory", "onnx"]
    results = {}
    if "speed" in parts:
        results["speed"] = bench_speed()
    if "memory" in parts:
        results["memory"] = bench_memory(args.size)
    if "onnx" in parts:
        torch.set_num_threads(args.threads)
        results["onnx"] = bench_onnx(args.size, dynamic=args.dynamic)
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
