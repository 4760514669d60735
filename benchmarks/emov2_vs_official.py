"""LightZoo EMOv2 against the official implementation: logits parity at several input sizes, and eager latency
measured interleaved in one process.

The official code is NOT part of this repository. Check out zhangzjn/EMOv2 (commit 582a96f) somewhere, make
``model.lib_emo.emo2`` importable from ``--official-path`` (its ``model/__init__.py`` pulls in the whole training
stack; a two-line stand-in that defines ``MODEL.register_module`` as the identity is enough) and have ``einops`` on
the path. Then::

    python benchmarks/emov2_vs_official.py --official-path .official --variants 1m 5m --sizes 224 256 320x192 100x76
    python benchmarks/emov2_vs_official.py --official-path .official --variants 5m --latency --threads 2

Weights: the official model's random init with every norm and layer scale moved away from its init (so a wrong
epsilon or a missing scale shows), handed to ours through ``zoo.create_model(checkpoint_path=...)`` as an official
``{'net': state_dict}`` file, i.e. through ``checkpoint_filter_fn`` and a strict load.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from functools import partial

import torch

import zoo
from zoo.bench import interleaved_latency

OFFICIAL_FNS = {"1m": "EMO2_1M_k5_hybrid", "2m": "EMO2_2M_k5_hybrid", "5m": "EMO2_5M_k5_hybrid",
                "20m": "EMO2_20M_k5_hybrid"}


def perturb_(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if "running_var" in name:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif "gamma" in name:
                t.copy_(0.5 * torch.randn(t.shape, generator=g))
            elif name.startswith("head."):
                t.mul_(50)  # logits of order 10, so a relative error shows
            elif "norm" in name or "running_mean" in name:
                t.add_(0.1 * torch.randn(t.shape, generator=g))


def parse_size(s: str) -> tuple[int, int]:
    h, _, w = s.partition("x")
    return int(h), int(w or h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-path", required=True, help="folder from which model.lib_emo.emo2 imports")
    ap.add_argument("--variants", nargs="+", default=["1m", "5m"], choices=sorted(OFFICIAL_FNS))
    ap.add_argument("--resolution", type=int, default=224, choices=(224, 256, 512),
                    help="official variant family: 224 (window 7) or 256/512 (window 8)")
    ap.add_argument("--sizes", nargs="+", default=["224", "256", "320x192", "100x76"])
    ap.add_argument("--latency", action="store_true", help="also time both eagerly, interleaved")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.abspath(a.official_path))
    official = importlib.import_module("model.lib_emo.emo2")
    suffix = "" if a.resolution == 224 else f"_{a.resolution}"
    for v in a.variants:
        torch.manual_seed(0)
        off = getattr(official, OFFICIAL_FNS[v] + suffix)().eval()
        perturb_(off)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "official.pth")
            torch.save({"net": off.state_dict()}, path)
            ours = zoo.create_model(f"emov2_{v}{suffix}", checkpoint_path=path).eval()
        g = torch.Generator().manual_seed(2)
        for s in a.sizes:
            h, w = parse_size(s)
            x = torch.randn(2, 3, h, w, generator=g)
            with torch.inference_mode():
                ref, got = off(x)["out"], ours(x)
            print(f"emov2_{v}{suffix} {h}x{w}: max |logit diff| {(got - ref).abs().max().item():.2e} "
                  f"(logit scale {ref.abs().max().item():.2f})")
        if a.latency:
            x = torch.randn(a.batch, 3, a.resolution, a.resolution, generator=g)
            fns = {"ours": partial(ours, x), "official": partial(off, x)}
            t = interleaved_latency(fns, rounds=a.rounds)
            print(f"emov2_{v}{suffix} eager b{a.batch} {a.resolution}^2 {a.threads} threads: ours {t['ours']:.1f} ms, "
                  f"official {t['official']:.1f} ms, ratio {t['ours'] / t['official']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
