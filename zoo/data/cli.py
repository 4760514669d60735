"""``zoo data``: dataset utilities. ``zoo data synth --task TASK --out DIR`` writes a tiny synthetic dataset."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from ..heads import task_names

    parser = argparse.ArgumentParser(prog="zoo data", description="Dataset utilities")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write a deterministic synthetic dataset in the task's on-disk format")
    s.add_argument("--task", required=True, choices=task_names())
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--n", type=int, default=24, help="number of images / pairs (a quarter go to val)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--num-classes", type=int, default=3, help="object classes (shapes x colours, at most 8)")
    s.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from .synthetic import write_synthetic

    out = write_synthetic(args.task, args.out, n=args.n, size=args.size, num_classes=args.num_classes,
                          seed=args.seed)
    print(f"wrote {args.n} {args.task} samples ({args.size}x{args.size}) to {out}")
    return 0
