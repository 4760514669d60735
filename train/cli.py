"""``zoo train`` and ``zoo eval``: thin argument parsing around :func:`train.engine.fit` and
:func:`train.engine.evaluate_checkpoint`.

``zoo train`` with no arguments trains ``emov2_1m`` on scikit-learn's digits (no download) and prints where the
checkpoint and the plot of the curves went. The same command works under ``torchrun`` (``python -m zoo.train`` too).
"""

from __future__ import annotations

import argparse
import sys

TRAIN_EPILOG = """examples:
  zoo train                                                 # emov2_1m on digits (the embedded default)
  zoo train --config configs/classification/lwganet_l0_digits.yaml optim.lr=1e-3 train.epochs=5
  zoo train --resume runs/emov2_1m-digits                   # continue an interrupted run exactly
  torchrun --nproc_per_node=2 -m zoo.train --config CONFIG      # DDP (gloo on CPU, nccl on GPU)
overrides are dotted config keys: `zoo train --help-config` lists them all with their defaults."""


def main(argv: list[str] | None = None) -> int:
    """``zoo train [--config YAML] [key=value ...] [--resume [STATE]]``."""
    parser = argparse.ArgumentParser(
        prog="zoo train", description="Train a model from a YAML config (no arguments: emov2_1m on digits).",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", "-c", help="YAML recipe (configs/<task>/<model>_<data>.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="STATE",
                        help="continue from a training state (a train_state.pt or its run folder; without a value: "
                             "the config's run folder)")
    parser.add_argument("--out-dir", help="run folder (same as out_dir=...)")
    parser.add_argument("--help-config", action="store_true", help="list every config key, its type and default")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from zoo.config import describe_keys, load_config

    if args.help_config:
        print("config keys (set them in YAML or as key=value):\n" + describe_keys())
        return 0
    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(load_config(args.config, overrides).to_dict(), sort_keys=False), end="")
        return 0

    from .engine import fit

    resume = args.resume
    if resume == "auto" and args.config is None and not overrides:
        resume = True
    from zoo.cli import show_logs

    with show_logs("zoo.train", sys.stdout):
        result = fit(args.config, overrides, resume=True if resume == "auto" else resume, quiet=args.quiet)
    from .engine import _dist_env

    if _dist_env()[0] != 0:
        return 0
    if result["interrupted"]:
        print(f"stopped at epoch {result['epoch'] + 1}, step {result['step']}; the training state is in "
              f"{result['state']}\ncontinue with: zoo train --resume {result['out_dir']}")
        sig = result.get("signal")
        return 128 + int(sig) if sig else 0
    best = result["best"]
    print(f"best {result['best_metric']} {best:.4f} (epoch {result['best_epoch']})" if best is not None else
          "no validation ran")
    print(f"checkpoint: {result['best_checkpoint']}  (last: {result['last_checkpoint']})")
    print(f"plot:       {result['plot']}")
    print(f"metrics:    {result['metrics_jsonl']}")
    if result["best_checkpoint"]:
        print(f"next:       zoo predict --checkpoint {result['best_checkpoint']} IMAGE_OR_DIR")
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``zoo eval --checkpoint CKPT [--data ROOT_OR_DATASET] [key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog="zoo eval", description="Evaluate a LightZoo checkpoint with its task's metrics. The dataset and "
        "preprocessing default to those it was trained with (from its JSON sidecar).")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint written by zoo train")
    parser.add_argument("--data", help="dataset folder (sets data.root), or a dataset name such as digits")
    parser.add_argument("--split", help="split folder/name to evaluate (default: the config's data.val_split)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (data.img_size=...)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from zoo.cli import data_overrides, print_metrics, show_logs

    from .engine import evaluate_checkpoint

    overrides = list(args.overrides) + data_overrides(args.data)
    with show_logs("zoo.train"):  # stdout carries only the metrics (--json stays parseable)
        metrics = evaluate_checkpoint(args.checkpoint, overrides, split=args.split, device=args.device,
                                      batch_size=args.batch_size)
    print_metrics(metrics, args.json)
    return 0
