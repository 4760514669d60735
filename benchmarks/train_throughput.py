"""Training throughput of the engine vs a bare PyTorch loop (images/s), emov2_1m at 64x64 on CPU.

Both sides train the same model (two copies of one initialisation), read the same DataLoader (the engine's own,
over the same digits images) with the same batch size and optimizer (AdamW); the engine runs with its optional
features off (no EMA, AMP, mixup, label smoothing, clipping, scheduler). Epochs alternate engine / bare / engine
/ ... in one process so machine load hits both alike; the ratio of medians is the figure (target >= 0.95).

    python benchmarks/train_throughput.py [--img-size 64] [--batch-size 32] [--batches 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="emov2_1m")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=8, help="batches per timed epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.utils.data import Subset
    from zoo.train.engine import _Trainer

    from zoo.config import load_config
    from zoo.data.build import build_classification_data, make_loader

    n = args.batches * args.batch_size
    cfg = load_config(None, [f"model.name={args.model}", f"data.img_size={args.img_size}",
                             f"data.batch_size={args.batch_size}", "train.label_smoothing=0", "sched.sched=none",
                             "train.progress=false", "out_dir=/tmp/lightzoo_train_bench", "data.augment=false"])
    data = build_classification_data(cfg, None)
    data.train = Subset(data.train, range(n))
    trainer = _Trainer(cfg, None, data, quiet=True)
    trainer.setup()
    engine_model = trainer.model_without_ddp
    bare_model = copy.deepcopy(engine_model)
    opt = torch.optim.AdamW(bare_model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    loader, sampler = make_loader(data.train, args.batch_size, train=True, seed=0, rank=0, world_size=1, workers=0)
    crit = nn.CrossEntropyLoss()

    def bare_epoch(epoch: int) -> float:
        bare_model.train()
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in loader:
            loss = crit(bare_model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n / (time.perf_counter() - t0)

    def engine_epoch(epoch: int) -> float:
        trainer.epoch, trainer.batch = epoch, 0
        t0 = time.perf_counter()
        trainer.train_epoch()
        return n / (time.perf_counter() - t0)

    engine_epoch(0)  # warm-up both (allocator, first-call dispatch)
    bare_epoch(0)
    eng, bare = [], []
    for r in range(1, args.rounds + 1):
        eng.append(engine_epoch(r))
        bare.append(bare_epoch(r))
    me, mb = statistics.median(eng), statistics.median(bare)
    print(f"{args.model} {args.img_size}x{args.img_size}, batch {args.batch_size}, {args.batches} batches/epoch, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print(f"  engine      {me:8.1f} img/s   (per round: {', '.join(f'{v:.1f}' for v in eng)})")
    print(f"  bare loop   {mb:8.1f} img/s   (per round: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"  ratio engine / bare = {me / mb:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
