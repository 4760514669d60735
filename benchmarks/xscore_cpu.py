"""How long will ``zoo xscore --suite embedded ...`` take on this CPU? Per-cell costs from the real runner, projected.

Training the full comparison to time it costs what it measures, so this script measures what decides the time and
projects it per (model, dataset) cell:

1. ``c_train``: the cost of one training image per model, at the model's input size under the recipe and each
   batch size the recipe's size tiers use: forward, label-smoothed cross-entropy, backward, AdamW, timed over
   ``--budget`` seconds.
2. A *probe run* of the real command (``zoo.train.xscore.cli.main``) with the same models, datasets and threads,
   but one epoch of ``--probe-images`` training images per dataset: each cell's seconds include everything the real
   run does once per cell (model building, data preparation, the one validation pass over the whole validation
   split, checkpoints).
3. Per cell: ``projected = probe_cell + (epochs * n_train - probe_images) * c_train``, where ``epochs`` and the
   batch size are the tier's for the dataset's ``n_train`` (:meth:`Recipe.plan`); the total adds the cells.

Both wall-clock and CPU (process) time are reported. On a shared, busy machine the wall figures overstate what a
quiet machine takes; with ``--threads 1`` the CPU-time projection approximates the quiet single-thread wall time.
The figure of record is a run of the real command:

    taskset -c 0,1 python benchmarks/xscore_cpu.py --threads 1 --models emov2_1m peer_ghostnet
    zoo xscore --suite embedded --models paper-peers emov2_1m lwganet_l0 --out runs/xscore_embedded
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from zoo.train.xscore import cli

import zoo
from zoo.data.embedded import EMBEDDED_INFO, EMBEDDED_SUITE


def train_cost(name: str, size: int, batch: int, budget_s: float) -> dict[str, float]:
    """Seconds (wall and CPU) per training image: one warm-up step, then steps until ``budget_s`` is spent."""
    model = zoo.create_model(name, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    model.train()
    step()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < 2 or time.perf_counter() - t0 < budget_s:
        step()
        n += 1
    return {"wall": (time.perf_counter() - t0) / (n * batch), "cpu": (time.process_time() - c0) / (n * batch)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["emov2_1m", "peer_ghostnet", "peer_mobilenet"],
                   help="model names; paper-peers expands to the paper's peer set")
    p.add_argument("--epochs", type=int, default=None, help="override every tier's epochs (default: by size)")
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--probe-images", type=int, default=32, help="training images per cell in the probe run")
    p.add_argument("--budget", type=float, default=8.0, help="seconds of timed training steps per model")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = cli.expand_models(a.models)
    recipe = cli.Recipe(max_train=a.max_train, epochs=a.epochs)
    sizes = {m: cli.smallest_size(m) for m in models}
    n_train = {d: min(EMBEDDED_INFO[d].n_train, a.max_train or EMBEDDED_INFO[d].n_train) for d in EMBEDDED_SUITE}
    plans = {d: recipe.plan(n) for d, n in n_train.items()}
    print(f"{a.threads} thread(s); per dataset: " + "; ".join(
        f"{d} {n_train[d]} images, {p.tier}: {p.epochs} epochs x batch {p.batch_size}" for d, p in plans.items()))
    batches = sorted({p.batch_size for p in plans.values()})
    cost: dict[str, dict[int, dict[str, float]]] = {}
    for m in models:
        cost[m] = {b: train_cost(m, sizes[m], b, a.budget / len(batches)) for b in batches}
        print(f"  {m:<22} {sizes[m]}x{sizes[m]}: " + ", ".join(
            f"batch {b}: {1e3 * c['wall']:.1f} ms wall, {1e3 * c['cpu']:.1f} ms cpu per image"
            for b, c in cost[m].items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cli.main(["--suite", "embedded", "--models", *models, "--epochs", "1", "--max-train", str(a.probe_images),
                  "--threads", str(a.threads), "--out", tmp, "--no-plots"])
        probe_wall = time.perf_counter() - t0
        rows = cli.read_results(Path(tmp) / "results.csv")
    cells, tot = [], {"wall": 0.0, "cpu": 0.0}
    print(f"\n{'model':<22} {'dataset':<10} {'probe s':>8} {'probe cpu':>9} {'proj. s':>8} {'proj. cpu':>9}")
    for r in rows:
        m, d = r["model"], r["dataset"]
        plan = plans[d]
        extra = plan.epochs * n_train[d] - int(r["train_images"])
        c = cost[m][plan.batch_size]
        proj = {"wall": float(r["seconds"]) + extra * c["wall"], "cpu": float(r["cpu_seconds"]) + extra * c["cpu"]}
        tot["wall"] += proj["wall"]
        tot["cpu"] += proj["cpu"]
        cells.append({"model": m, "dataset": d, "tier": plan.tier, "epochs": plan.epochs,
                      "batch_size": plan.batch_size, "probe_s": float(r["seconds"]),
                      "probe_cpu_s": float(r["cpu_seconds"]), "projected_s": proj["wall"],
                      "projected_cpu_s": proj["cpu"]})
        print(f"{m:<22} {d:<10} {float(r['seconds']):>8.1f} {float(r['cpu_seconds']):>9.1f} {proj['wall']:>8.0f} "
              f"{proj['cpu']:>9.0f}")
    print(f"\nprobe run: {probe_wall:.0f} s wall. Projected full run: {tot['wall']:.0f} s wall "
          f"({tot['wall'] / 60:.1f} min) as loaded as now; {tot['cpu']:.0f} s CPU ({tot['cpu'] / 60:.1f} min), "
          f"the quiet {a.threads}-thread estimate")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"threads": a.threads, "recipe": recipe.to_json(), "n_train": n_train, "sizes": sizes,
                       "train_cost_s": cost, "cells": cells, "projected_total_s": tot["wall"],
                       "projected_total_cpu_s": tot["cpu"]}, f, indent=2)


if __name__ == "__main__":
    main()
