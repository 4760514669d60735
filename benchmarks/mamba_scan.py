"""Selective-scan speed, LightM-UNet inference memory, and LightM-UNet ONNX export (issue 4).

    python benchmarks/mamba_scan.py                 # everything (the ONNX part exports at 256², minutes on 2 cores)
    python benchmarks/mamba_scan.py --only speed    # chunked vs sequential scan, L=4096, d_inner=512, N=16
    python benchmarks/mamba_scan.py --only memory   # peak RSS of one 256² lightm_unet_2d forward (fresh process)
    python benchmarks/mamba_scan.py --only onnx     # export at 256² (dynamic H/W), node count, onnxruntime vs
                                                    # PyTorch at 256² and, through the same graph, 192²: parity
                                                    # and speed (wall and CPU time, alternating runs)

Speeds are measured interleaved in one process (``zoo.bench.interleaved_latency``) and reported as ratios, since
this machine is shared; the speed part also reports the ratio of per-call CPU time (best of the rounds), which a
loaded machine disturbs less than wall time. Memory is measured in a child process so nothing else inflates its
peak. The ONNX export uses the TorchScript exporter (``dynamo=False``), where the scan is one ONNX ``Loop`` per Mamba
layer whose shapes come from the input, so one graph serves every size that is a multiple of 8.
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
import warnings

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
    fns = {"sequential": lambda: selective_scan_sequential(*args), "chunked": lambda: selective_scan_chunked(*args)}
    diff = (fns["chunked"]() - fns["sequential"]()).abs().max().item()
    out: dict[str, float] = {"max_abs_diff": diff}
    for threads in sorted({1, 2, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        t = interleaved_latency(fns, warmup=1, rounds=rounds)
        cpu = {k: min(_cpu_s(f) for _ in range(rounds)) for k, f in fns.items()}
        print(f"scan L={seqlen} d_inner={d_inner} N={d_state} threads={threads}: sequential {t['sequential']:.0f} ms, "
              f"chunked {t['chunked']:.0f} ms -> {t['sequential'] / t['chunked']:.1f}x wall, "
              f"{cpu['sequential'] / cpu['chunked']:.1f}x CPU time (max abs diff {diff:.1e})")
        out[f"threads{threads}_wall"] = t["sequential"] / t["chunked"]
        out[f"threads{threads}_cpu"] = cpu["sequential"] / cpu["chunked"]
    return out


def _cpu_s(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


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


def _all_nodes(graph) -> int:
    """Nodes of an ONNX graph including those inside Loop/Scan/If bodies."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            if attr.g.node:
                total += _all_nodes(attr.g)
            total += sum(_all_nodes(g) for g in attr.graphs)
    return total


def bench_onnx(size: int = 256, second: int = 192, rounds: int = 2) -> dict[str, object]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    import zoo

    torch.manual_seed(0)
    model = zoo.create_model("lightm_unet_2d").eval()
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lightm_unet_2d.onnx")
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
        export_s, export_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        graph = onnx.load(path).graph
        ops = collections.Counter(n.op_type for n in graph.node)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning would steal eager's cores
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        res: dict[str, object] = {"export_s": export_s, "export_cpu_s": export_cpu_s, "nodes": len(graph.node),
                                  "nodes_with_loop_bodies": _all_nodes(graph), "loop_nodes": ops.get("Loop", 0),
                                  "scan_nodes": ops.get("Scan", 0), "onnx_mb": os.path.getsize(path) / 2 ** 20}
        print(f"export (TorchScript exporter, dynamic H/W) {export_s:.0f} s wall, {export_cpu_s:.0f} s CPU; "
              f"{len(graph.node)} top-level nodes ({res['nodes_with_loop_bodies']} with the loop bodies), "
              f"{ops.get('Loop', 0)} Loop, {ops.get('Scan', 0)} Scan; most common: {ops.most_common(5)}")
        for s in (size, second):
            xi = torch.randn(1, 3, s, s)
            with torch.inference_mode():
                ref = model(xi).numpy()
            got = sess.run(None, {"x": xi.numpy()})[0]
            diff = float(np.abs(got - ref).max())
            res[f"max_abs_diff_{s}"] = diff
            # alternating rounds, wall and CPU time (a busy machine stretches wall time, CPU time much less)
            wall = {"torch": [], "ort": []}
            cpu = {"torch": [], "ort": []}
            for _ in range(rounds):
                for name in ("torch", "ort"):
                    t0, c0 = time.perf_counter(), time.process_time()
                    if name == "torch":
                        with torch.inference_mode():
                            model(xi)
                    else:
                        sess.run(None, {"x": xi.numpy()})
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
            tw, ow = min(wall["torch"]), min(wall["ort"])
            tc, oc = min(cpu["torch"]), min(cpu["ort"])
            res[f"ort_s_{s}"], res[f"torch_s_{s}"] = ow, tw
            res[f"ort_cpu_s_{s}"], res[f"torch_cpu_s_{s}"] = oc, tc
            print(f"{s}x{s} through the graph exported at {size}x{size}: onnxruntime vs PyTorch max abs diff "
                  f"{diff:.2e}; best of {rounds}: ORT {ow:.2f} s / PyTorch {tw:.2f} s wall -> {tw / ow:.2f}x, "
                  f"CPU {oc:.2f} / {tc:.2f} s -> {tc / oc:.2f}x ({torch.get_num_threads()} thread(s))")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("speed", "memory", "onnx"), action="append")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the memory/onnx parts")
    p.add_argument("--second-size", type=int, default=192, help="another input size run through the same graph")
    p.add_argument("--rounds", type=int, default=2, help="alternating PyTorch/ORT runs per size (onnx part)")
    args = p.parse_args(argv)
    parts = args.only or ["speed", "memory", "onnx"]
    results = {}
    if "speed" in parts:
        results["speed"] = bench_speed()
    if "memory" in parts:
        results["memory"] = bench_memory(args.size)
    if "onnx" in parts:
        torch.set_num_threads(args.threads)
        results["onnx"] = bench_onnx(args.size, args.second_size, args.rounds)
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
