"""LWGANet: ours vs the official implementation, eager latency measured interleaved in one process.

Usage::

    python benchmarks/lwganet_vs_official.py OFFICIAL_DIR [--variants l0 l2] [--size 224] [--threads 2] [--rounds 30]
        [--repeat 5]

``OFFICIAL_DIR`` is a folder holding the official ``models/LWGANet.py`` (AeroVILab-AHU/LWGANet,
``classification/models``) importable as ``models.LWGANet`` together with its dependency ``antialiased_cnns``.
Nothing official is shipped with LightZoo; the code is imported from that folder at run time.
Ours receives the official model's weights (through ``checkpoint_filter_fn``), so the logit difference is printed too.

``--clock wall`` (default) reports wall-time medians (``zoo.bench.interleaved_latency``); ``--clock cpu`` reports
medians of the process's CPU time per call, also interleaved. On a shared, busy machine the CPU clock at
``--threads 1`` is the steadier ratio (time spent descheduled is not counted); with more threads it also counts
the worker threads' spinning, so use the wall clock there.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import warnings
from functools import partial

import torch

import zoo
from zoo.backbones.lwganet import checkpoint_filter_fn
from zoo.bench import interleaved_latency

OFFICIAL_FNS = {
    "l0": "LWGANet_L0_1242_e32_k11_GELU",
    "l1": "LWGANet_L1_1242_e64_k11_GELU",
    "l2": "LWGANet_L2_1442_e96_k11_ReLU",
}


def cpu_time_latency(fns: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median process CPU time per call in ms, the callables run in alternation."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for f in fns.values():
                f()
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.process_time()
                f()
                times[k].append((time.process_time() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official_dir")
    ap.add_argument("--variants", nargs="+", default=["l0", "l2"], choices=sorted(OFFICIAL_FNS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--num-classes", type=int, default=45)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each variant N times (fresh interleaved loops) and report the median ratio and "
                         "its range: on a shared machine one loop's ratio moves by +-0.03")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    sys.path.insert(0, a.official_dir)
    # the official file tries ``from mmdet.utils import ...`` and falls back on ImportError; an installed mmdet that
    # is incompatible with the installed mmcv raises AssertionError instead, so make the import fail cleanly
    sys.modules.setdefault("mmdet", None)
    official = importlib.import_module("models.LWGANet")
    print(f"batch {a.batch}, {a.size}x{a.size}, {a.threads} threads, {a.rounds} interleaved rounds, "
          f"median {a.clock}-clock ms")
    print(f"{'variant':<12}{'official':>10}{'ours':>10}{'ours/official':>15}{'max|dlogit|':>14}")
    for v in a.variants:
        torch.manual_seed(0)
        off = getattr(official, OFFICIAL_FNS[v])(num_classes=a.num_classes).eval()
        ours = zoo.create_model(f"lwganet_{v}", num_classes=a.num_classes).eval()
        ours.load_state_dict(checkpoint_filter_fn(off.state_dict(), ours), strict=True)
        x = torch.randn(a.batch, 3, a.size, a.size)
        with torch.inference_mode():
            diff = (ours(x) - off(x)).abs().max().item()
        fns = {"official": partial(off, x), "ours": partial(ours, x)}
        ratios = []
        for _ in range(a.repeat):
            t = interleaved_latency(fns, rounds=a.rounds) if a.clock == "wall" else cpu_time_latency(fns, a.rounds)
            ratios.append(t["ours"] / t["official"])
            print(f"lwganet_{v:<4}{t['official']:>10.2f}{t['ours']:>10.2f}{ratios[-1]:>15.3f}{diff:>14.2e}")
        if a.repeat > 1:
            print(f"lwganet_{v:<4} median ours/official over {a.repeat} loops {statistics.median(ratios):.3f} "
                  f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
