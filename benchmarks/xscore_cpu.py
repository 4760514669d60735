"""How long would ``zoo xscore --suite embedded --epochs E`` take on this CPU? Measured per model, then projected.

A full run trains every model on 6,174 images per epoch (the suite's training splits) and validates 1,591 per epoch;
on a busy 2-core machine it takes hours, so this script measures what decides the time, per model, at the run's
input size: one training step (forward, label-smoothed cross-entropy, backward, AdamW) and one validation forward,
batch as in the runner, torch threads as given; then projects

    time ≈ E × (n_train / train_images_per_s + n_val / eval_images_per_s)

(no data loading, checkpointing or model building, which the runner adds; the projection is a lower bound).
Pin the cores with ``taskset -c 0,1`` and pass ``--threads 2`` for the "2 CPU cores" figure.

    python benchmarks/xscore_cpu.py --models emov2_1m lwganet_l0 mobilenetv2_ulsam phc_resnet18_cifar --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import zoo
from zoo.data.embedded import EMBEDDED_INFO, EMBEDDED_SUITE


def measure(name: str, size: int, batch: int, budget_s: float) -> dict[str, float]:
    """Median-free, budgeted timing: one warm-up step, then steps until ``budget_s`` is spent (at least one)."""
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
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < budget_s:
        step()
        n += 1
    train_ips = n * batch / (time.perf_counter() - t0)
    model.eval()
    xe = torch.randn(2 * batch, 3, size, size)
    with torch.no_grad():
        model(xe)
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < budget_s / 3:
            model(xe)
            n += 1
    eval_ips = n * 2 * batch / (time.perf_counter() - t0)
    return {"train_images_per_s": train_ips, "eval_images_per_s": eval_ips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["emov2_1m", "lwganet_l0", "mobilenetv2_ulsam",
                                                   "phc_resnet18_cifar"])
    p.add_argument("--size", type=int, default=96, help="input size (the runner's auto size for these models: 96)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed training steps per model")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n_train = sum(EMBEDDED_INFO[d].n_train for d in EMBEDDED_SUITE)
    n_val = sum(EMBEDDED_INFO[d].n_val for d in EMBEDDED_SUITE)
    rows, total = [], 0.0
    print(f"{a.threads} threads, {a.size}x{a.size}, batch {a.batch}, {a.epochs} epochs of {n_train} train + "
          f"{n_val} val images")
    print(f"{'model':<22} {'train img/s':>12} {'eval img/s':>11} {'projected s':>12}")
    for m in a.models:
        r = measure(m, a.size, a.batch, a.budget)
        secs = a.epochs * (n_train / r["train_images_per_s"] + n_val / r["eval_images_per_s"])
        total += secs
        rows.append({"model": m, **r, "projected_s": secs})
        print(f"{m:<22} {r['train_images_per_s']:>12.1f} {r['eval_images_per_s']:>11.1f} {secs:>12.0f}", flush=True)
    print(f"projected total: {total:.0f} s ({total / 60:.1f} min), a lower bound")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"threads": a.threads, "size": a.size, "batch": a.batch, "epochs": a.epochs,
                       "n_train": n_train, "n_val": n_val, "rows": rows, "projected_total_s": total}, f, indent=2)


if __name__ == "__main__":
    main()
