"""Detection training throughput (images/s) with the detector's internal resize at ``data.img_size`` vs at
torchvision's default 800 x 1333, on ``configs/detection/emov2_1m_synthetic.yaml`` (64 x 64 synthetic images).

"default" is the model the trainer built before the internal resize followed the config (torchvision's
``min_size=800, max_size=1333``: every 64 x 64 image is upsampled to 800 x 800 inside the model); "img_size" is the
model ``zoo train`` builds now (``min_size = max_size = data.img_size``). Both start from one initialisation, read
the trainer's own data pipeline and take AdamW steps; timed rounds alternate default / img_size in one process so
machine load hits both alike. The figure is the ratio of median images/s. The img_size model trains at the
config's batch size; the default model at ``--batch-size-default`` (4 by default: at 800 x 800 a batch of 8 needs
~8 GB, and its cost per image is dominated by the pixels, not by the batch). Peak RSS is read after each model's
first (untimed) step, the small model first, so each figure is that model's peak.

    python benchmarks/detection_train_throughput.py [--batches 4] [--batches-default 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "detection" / "emov2_1m_synthetic.yaml"


def cpu_line() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu: unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    have = [f for f in ("avx2", "avx512_vnni", "avx_vnni") if f in flags]
    listed = " ".join(have) or "none of avx2/avx512_vnni/avx_vnni"
    return f"cpu: {model}; flags: {listed}; threads {torch.get_num_threads()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=0, help="img_size model (0: the config's data.batch_size)")
    ap.add_argument("--batch-size-default", type=int, default=4, help="model at torchvision's default size")
    ap.add_argument("--batches", type=int, default=4, help="img_size model: batches per timed round")
    ap.add_argument("--batches-default", type=int, default=1, help="default model: batches per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from zoo.config import load_config
    from zoo.data.build import make_loader
    from zoo.tasks import get_task

    root = Path(tempfile.mkdtemp(prefix="lightzoo_det_bench_"))
    overrides = [f"data.root={root / 'data'}", f"out_dir={root / 'run'}"]
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = load_config(str(CONFIG), overrides)
    task = get_task(cfg.task)
    data = task.build_data(cfg)
    small = task.build_model(cfg, data)  # what `zoo train` builds: internal resize at data.img_size
    default = copy.deepcopy(small)
    t = default.detector.transform
    t.min_size, t.max_size = (800,), 1333  # torchvision's defaults, which the model kept before
    def first_batches(batch_size: int, n: int) -> list[dict]:
        loader, _ = make_loader(data.train, batch_size, train=True, seed=0, rank=0, world_size=1, workers=0,
                                collate_fn=data.collate_fn)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
        return out

    sizes = {"img_size": cfg.data.batch_size, "default": args.batch_size_default}
    batches = {"img_size": first_batches(sizes["img_size"], args.batches),
               "default": first_batches(sizes["default"], args.batches_default)}
    models = {"img_size": small, "default": default}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(name: str, batch: dict) -> None:
        models[name].train()
        loss = task.loss(models[name], batch)
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    peak = {}
    for name in ("img_size", "default"):  # warm-up (untimed); the small model first, so its peak is its own
        step(name, batches[name][0])
        peak[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name in ("default", "img_size"):
            t0 = time.perf_counter()
            for batch in batches[name]:
                step(name, batch)
            rates[name].append(len(batches[name]) * sizes[name] / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(cpu_line())
    print(f"config {CONFIG.name}: data.img_size {cfg.data.img_size}; {args.rounds} rounds of {args.batches} batches "
          f"of {sizes['img_size']} (img_size) / {args.batches_default} of {sizes['default']} (default)")
    for name, label in (("default", "before (internal resize 800x1333)"),
                        ("img_size", f"after  (internal resize {cfg.data.img_size})")):
        print(f"{label}: {med[name]:8.2f} images/s  (rounds {', '.join(f'{r:.2f}' for r in rates[name])}); "
              f"peak RSS after first step {peak[name]:.0f} MiB")
    print(f"speed-up after/before: {med['img_size'] / med['default']:.1f}x")


if __name__ == "__main__":
    main()
