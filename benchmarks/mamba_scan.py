"""Selective scan and LightM-UNet: speed and peak memory of the default scan (the compiled CPU kernel) next to the
plain-PyTorch chunked scan, an earlier implementation and the sequential reference, and the ONNX export.

    python benchmarks/mamba_scan.py                     # scan + model parts (no ONNX)
    python benchmarks/mamba_scan.py --only scan         # one layer's scan, L=4096, d_inner=512, N=16: compiled vs
                                                        # chunked vs previous vs sequential, inference and
                                                        # forward+backward
    python benchmarks/mamba_scan.py --only model        # LightM-UNet 2D/3D inference and one training step, each
                                                        # configuration in its own process (peak RSS per config)
    python benchmarks/mamba_scan.py --only onnx         # export at 256² under timm's exportable switch, onnxruntime
                                                        # vs PyTorch at 256² and 192² through the same graph

"new" is what ``scan_impl="auto"`` runs here (the compiled kernel where a C compiler exists; the line at the top
says which); "chunked" is the plain-PyTorch scan of this tree (``scan_impl="chunked"``, the fallback without a
compiler); "previous" is ``zoo/layers/selective_scan.py`` as of ``--previous-rev`` (read with ``git show``),
swapped into the Mamba layers of the child process; "sequential" is the step-by-step reference. The previous
implementation's training step keeps (B, d_inner, L, d_state) tensors for autograd: it needs 5.4 GB at 128² and
18.7 GB at 256² (2D), so it runs only up to ``--previous-train-max`` (64² by default) and larger sizes show these
recorded figures instead, labelled as such. Timings are the best of ``--rounds`` runs after one warm-up, wall and
CPU time (a loaded machine stretches wall time much more than CPU time); the ratios are other/new, so > 1 means
the new scan is faster.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PREVIOUS_REV = "ecc9755"
# The previous implementation's figures at sizes this benchmark does not run it at (2 cores, torch 2.14.1).
RECORDED_PREVIOUS = {
    ("lightm_unet_2d", 128, "train"): {"wall_s": 24.0, "peak_rss_mb": 5.4 * 1024},
    ("lightm_unet_2d", 256, "train"): {"wall_s": 75.0, "peak_rss_mb": 18.7 * 1024},
    ("lightm_unet_2d", 256, "infer"): {"wall_s": 2.33, "peak_rss_mb": 1.0 * 1024},
    ("lightm_unet_3d", 32, "train"): {"wall_s": float("nan"), "peak_rss_mb": 21 * 1024},
}
TARGETS = {  # (model, size, mode): (seconds, peak RSS in MiB)
    ("lightm_unet_2d", 256, "infer"): (0.6, None),
    ("lightm_unet_2d", 256, "train"): (5.0, 3 * 1024),
    ("lightm_unet_3d", 64, "train"): (None, 4 * 1024),
}


def cpu_flags() -> str:
    """CPU model and the vector extensions that matter for these kernels."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
    return f"{model}; {os.cpu_count()} CPUs; flags: {' '.join(f for f in wanted if f in flags) or 'none of interest'}"


def previous_source(rev: str) -> Path | None:
    """The previous selective_scan.py written to a temporary file, or None when git cannot provide it."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:zoo/layers/selective_scan.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"previous implementation unavailable ({rev}): {exc}", file=sys.stderr)
        return None
    fd, path = tempfile.mkstemp(prefix="selective_scan_previous_", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(src)
    return Path(path)


def _load_module(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("selective_scan_previous", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- one layer's scan ---------------------------------------------------------------------------------------------

def bench_scan(prev_path: Path | None, seqlen: int = 4096, d_inner: int = 512, d_state: int = 16,
               rounds: int = 3) -> dict[str, float]:
    """Inference and forward+backward of one scan, interleaved in this process (CPU time, best of ``rounds``)."""
    from zoo.layers import selective_scan as new
    from zoo.layers.selective_scan_kernel import kernel_available, selective_scan_compiled

    torch.manual_seed(0)
    u = torch.randn(1, d_inner, seqlen)
    delta = torch.randn(1, d_inner, seqlen)
    a = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # S4D-real init
    b, c = torch.randn(1, d_state, seqlen), torch.randn(1, d_state, seqlen)
    d, z = torch.ones(d_inner), torch.randn(1, d_inner, seqlen)
    bias = torch.randn(d_inner) - 4.0  # softplus(bias) ~ mamba_ssm's dt init range
    impls = {"new": selective_scan_compiled if kernel_available() else new.selective_scan_chunked,
             "chunked": new.selective_scan_chunked, "sequential": new.selective_scan_sequential}
    if prev_path is not None:
        impls["previous"] = _load_module(str(prev_path)).selective_scan_chunked

    def infer(fn):
        with torch.no_grad():
            return fn(u, delta, a, b, c, d, z, bias, True)

    def train(fn):
        leaves = [t.clone().requires_grad_(True) for t in (u, delta, a, b, c, d, z, bias)]
        fn(*leaves, True).square().sum().backward()

    out: dict[str, float] = {"max_abs_diff": (infer(impls["new"]) - infer(impls["sequential"])).abs().max().item()}
    for mode, run in (("infer", infer), ("train", train)):
        cpu = collections.defaultdict(lambda: float("inf"))
        for fn in impls.values():  # warm-up
            run(fn)
        for _ in range(rounds):
            for name, fn in impls.items():
                t0 = time.process_time()
                run(fn)
                cpu[name] = min(cpu[name], time.process_time() - t0)
        line = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in cpu.items())
        ratios = ", ".join(f"{k}/new {v / cpu['new']:.2f}x" for k, v in cpu.items() if k != "new")
        print(f"scan {mode} L={seqlen} d_inner={d_inner} N={d_state} ({torch.get_num_threads()} threads, CPU time): "
              f"{line} -> {ratios}", flush=True)
        out.update({f"{mode}_{k}_cpu_s": v for k, v in cpu.items()})
    return out


# --- the whole network, one configuration per process --------------------------------------------------------------

_MODEL_CHILD = r"""
import json, resource, sys, time
import torch
import zoo
import zoo.layers.mamba as mamba
from zoo.layers.mamba import set_scan_impl

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
if cfg["impl"] == "previous":
    import importlib.util
    spec = importlib.util.spec_from_file_location("selective_scan_previous", cfg["previous_path"])
    prev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prev)
    mamba.selective_scan = prev.selective_scan  # what every Mamba layer calls
torch.manual_seed(0)
in_chans = 3 if cfg["model"] == "lightm_unet_2d" else 1
model = zoo.create_model(cfg["model"], in_chans=in_chans, num_classes=2)
if cfg["impl"] in ("sequential", "chunked"):
    set_scan_impl(model, cfg["impl"])
spatial = (cfg["size"],) * (2 if cfg["model"] == "lightm_unet_2d" else 3)
x = torch.randn(1, in_chans, *spatial)
target = torch.randint(0, 2, (1, *spatial))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

def step():
    if cfg["mode"] == "infer":
        with torch.inference_mode():
            model(x)
    else:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()

model.train(cfg["mode"] == "train")
built_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
walls, cpus = [], []
for i in range(cfg["rounds"] + 1):  # the first run is a warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    if i:
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
print(json.dumps({"wall_s": min(walls), "cpu_s": min(cpus), "built_mb": built_mb,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_model_config(model: str, size: int, mode: str, impl: str, threads: int, rounds: int,
                     prev_path: Path | None, timeout: float) -> dict | None:
    cfg = {"model": model, "size": size, "mode": mode, "impl": impl, "threads": threads, "rounds": rounds,
           "previous_path": str(prev_path) if prev_path else None}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run([sys.executable, "-c", _MODEL_CHILD, json.dumps(cfg)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  {model} {size} {mode} {impl}: over {timeout:.0f} s, stopped", flush=True)
        return None
    if proc.returncode != 0:
        print(f"  {model} {size} {mode} {impl}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_model(prev_path: Path | None, configs: list[tuple[str, int, str]], threads: int, rounds: int,
                previous_train_max: int, sequential_max: int, timeout: float, chunked: bool = True) -> list[dict]:
    rows = []
    for model, size, mode in configs:
        row: dict = {"model": model, "size": size, "mode": mode}
        for impl in ("new", "chunked", "previous", "sequential"):
            dims = 3 if model.endswith("3d") else 2
            too_big = mode == "train" and size ** dims > previous_train_max ** 2  # pixels or voxels
            if impl == "previous" and (prev_path is None or too_big):
                rec = RECORDED_PREVIOUS.get((model, size, mode))
                if rec:
                    row["previous_recorded"] = rec
                continue
            if (impl == "sequential" and size > sequential_max) or (impl == "chunked" and not chunked):
                continue
            res = run_model_config(model, size, mode, impl, threads, rounds, prev_path, timeout)
            if res is not None:
                row[impl] = res
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _format_row(row: dict) -> str:
    dims = "3" if row["model"].endswith("3d") else "2"
    head = f"{row['model']} 1x{'3' if dims == '2' else '1'}x{row['size']}^{dims} {row['mode']:5s}"
    new = row.get("new")
    parts = []
    for impl in ("new", "chunked", "previous", "sequential"):
        r = row.get(impl)
        if r is None:
            continue
        text = f"{impl} {r['wall_s']:.2f} s wall / {r['cpu_s']:.2f} s CPU, peak RSS {r['peak_rss_mb']:.0f} MiB"
        if impl != "new" and new is not None:
            text += (f" (x{r['wall_s'] / new['wall_s']:.1f} wall, x{r['cpu_s'] / new['cpu_s']:.1f} CPU, "
                     f"x{r['peak_rss_mb'] / new['peak_rss_mb']:.1f} RSS)")
        parts.append(text)
    rec = row.get("previous_recorded")
    if rec is not None and "previous" not in row:
        text = f"previous (recorded, not run) {rec['wall_s']:.2f} s, peak RSS {rec['peak_rss_mb']:.0f} MiB"
        if new is not None:
            text += f" (x{rec['wall_s'] / new['wall_s']:.1f} wall, x{rec['peak_rss_mb'] / new['peak_rss_mb']:.1f} RSS)"
        parts.append(text)
    target = TARGETS.get((row["model"], row["size"], row["mode"]))
    if target is not None and new is not None:
        t_s, t_mb = target
        checks = []
        if t_s is not None:
            checks.append(f"time <= {t_s} s: {'met' if new['wall_s'] <= t_s else 'NOT met'} (wall)")
        if t_mb is not None:
            checks.append(f"RSS <= {t_mb / 1024:.0f} GB: {'met' if new['peak_rss_mb'] <= t_mb else 'NOT met'}")
        parts.append("target " + ", ".join(checks))
    return head + "\n    " + "\n    ".join(parts)


# --- ONNX ----------------------------------------------------------------------------------------------------------

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
    """Export under timm's exportable switch (what ``zoo export`` sets), then onnxruntime vs PyTorch."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from timm.layers import set_layer_config

    import zoo

    torch.manual_seed(0)
    model = zoo.create_model("lightm_unet_2d").eval()
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lightm_unet_2d.onnx")
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings(), set_layer_config(exportable=True):
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
            wall = {"torch": [], "ort": []}
            cpu = {"torch": [], "ort": []}
            for _ in range(rounds):  # alternating rounds
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
            print(f"{s}x{s} through the graph exported at {size}x{size}: onnxruntime vs PyTorch max abs diff "
                  f"{diff:.2e}; best of {rounds}: ORT {ow:.2f} s / PyTorch {tw:.2f} s wall, "
                  f"CPU {oc:.2f} / {tc:.2f} s ({torch.get_num_threads()} thread(s))")
    return res


DEFAULT_CONFIGS = ("lightm_unet_2d:256:infer", "lightm_unet_2d:256:train", "lightm_unet_2d:128:train",
                   "lightm_unet_2d:64:infer", "lightm_unet_2d:64:train", "lightm_unet_3d:64:train",
                   "lightm_unet_3d:32:train")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("scan", "model", "onnx"), action="append")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="MODEL:SIZE:MODE",
                   help="model configurations (mode infer or train)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every measurement")
    p.add_argument("--rounds", type=int, default=2, help="timed runs per measurement (after one warm-up)")
    p.add_argument("--previous-rev", default=DEFAULT_PREVIOUS_REV,
                   help="git revision whose zoo/layers/selective_scan.py is the previous implementation")
    p.add_argument("--previous-train-max", type=int, default=64,
                   help="the previous implementation's training step runs only on inputs of at most this size "
                        "squared pixels/voxels (it needs 5.4 GB at 128² and ~21 GB for a 3D 32³ input); larger "
                        "inputs show the recorded figures instead")
    p.add_argument("--no-previous", action="store_true", help="do not run the previous implementation at all")
    p.add_argument("--no-chunked", action="store_true", help="do not run the plain-PyTorch chunked scan")
    p.add_argument("--sequential-max", type=int, default=64, help="largest size the sequential reference runs at")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per configuration process")
    p.add_argument("--size", type=int, default=256, help="ONNX part: export size")
    p.add_argument("--second-size", type=int, default=192, help="ONNX part: another size run through the graph")
    args = p.parse_args(argv)
    parts = args.only or ["scan", "model"]
    torch.set_num_threads(args.threads)
    from zoo.layers.selective_scan_kernel import kernel_status

    print(f"{cpu_flags()}; torch {torch.__version__}; {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    print(f"default CPU scan: {kernel_status()}", flush=True)
    prev_path = None if args.no_previous else previous_source(args.previous_rev)
    results: dict = {}
    try:
        if "scan" in parts:
            results["scan"] = bench_scan(prev_path, rounds=args.rounds)
        if "model" in parts:
            configs = [(m, int(s), mode) for m, s, mode in (c.split(":") for c in args.configs)]
            results["model"] = bench_model(prev_path, configs, args.threads, args.rounds, args.previous_train_max,
                                           args.sequential_max, args.timeout, not args.no_chunked)
        if "onnx" in parts:
            results["onnx"] = bench_onnx(args.size, args.second_size, args.rounds)
    finally:
        if prev_path is not None:
            prev_path.unlink(missing_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
