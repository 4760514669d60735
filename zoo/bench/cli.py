"""``zoo bench``: parameters, MACs and eager CPU latency of models, side by side with a timm peer.

Latency is the median of many forward passes, measured *interleaved* (one pass of each model per round) so that a
busy, shared machine slows every model alike and the ratios to the peer stay meaningful even when absolute times
do not. Read the ratio column first.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import torch

from ..errors import ZooError
from ..registry import check_model_name, create_timm_model
from . import count_macs, count_params, interleaved_latency

DEFAULT_PEER = "mobilenetv3_large_100"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo bench",
        description="Params, MACs and eager median latency of models next to a timm peer, measured interleaved.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="models to measure (LightZoo or timm names)")
    p.add_argument("--peer", default=DEFAULT_PEER, help=f"timm model to compare with (default {DEFAULT_PEER}; "
                                                        "'none' for no peer)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    p.add_argument("--size", type=int, nargs="+", default=[224], metavar="S",
                   help="input size: S for SxS or H W (default 224)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per batch size (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed passes per model first (default 5)")
    return p


def _input_hw(size: list[int]) -> tuple[int, int]:
    if len(size) == 1:
        return size[0], size[0]
    if len(size) == 2:
        return size[0], size[1]
    raise ZooError(f"--size takes S or H W, got {len(size)} numbers")


def bench(names: list[str], peer: str | None = DEFAULT_PEER, batches: tuple[int, ...] = (1, 8),
          size: tuple[int, int] = (224, 224), rounds: int = 30, warmup: int = 5) -> list[dict[str, Any]]:
    """One row per model: params, MACs at ``size`` (batch 1) and median eager latency (ms) per batch size.

    Models are built untrained in eval mode; the peer, if any, comes first and every other row carries its
    latency ratio to the peer (``ratio_b{batch}``).
    """

    from .. import backbones  # noqa: F401  (registers LightZoo's models with timm)

    if any(b < 1 for b in batches) or rounds < 1:
        raise ZooError("batch sizes and --rounds must be positive")
    all_names = ([peer] if peer else []) + [n for n in names if n != peer]
    models = {}
    for n in all_names:
        check_model_name(n)
        models[n] = create_timm_model(n, pretrained=False).eval()
    h, w = size
    rows = [{"name": n, "params": count_params(m), "macs": count_macs(m, (3, h, w))} for n, m in models.items()]
    for b in batches:
        x = torch.randn(b, 3, h, w)
        times = interleaved_latency({n: partial(m, x) for n, m in models.items()}, warmup=warmup,
                                    rounds=rounds)
        for row in rows:
            row[f"ms_b{b}"] = times[row["name"]]
            if peer:
                row[f"ratio_b{b}"] = times[row["name"]] / times[peer]
    return rows


def format_rows(rows: list[dict[str, Any]], batches: tuple[int, ...], peer: str | None) -> str:
    width = max(12, *(len(r["name"]) for r in rows))
    head = f"{'model'.ljust(width)}  {'params':>11}  {'MACs (G)':>8}"
    for b in batches:
        head += f"  {f'b{b} ms':>9}" + (f"  {f'b{b} x peer':>10}" if peer else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['name'].ljust(width)}  {r['params']:>11,}  {r['macs'] / 1e9:>8.4f}"
        for b in batches:
            line += f"  {r[f'ms_b{b}']:>9.2f}" + (f"  {r[f'ratio_b{b}']:>10.2f}" if peer else "")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of ``zoo bench`` (see ``zoo bench --help``)."""
    a = build_parser().parse_args(argv)
    if a.threads < 1:
        raise ZooError("--threads must be at least 1")
    torch.set_num_threads(a.threads)
    peer = None if a.peer.lower() == "none" else a.peer
    h, w = _input_hw(a.size)
    batches = tuple(a.batch)
    rows = bench(a.names, peer=peer, batches=batches, size=(h, w), rounds=a.rounds, warmup=a.warmup)
    print(f"eager CPU latency, {a.threads} threads, input {h}x{w}, median of {a.rounds} interleaved rounds; "
          "MACs at batch 1")
    print(format_rows(rows, batches, peer))
    return 0
