"""``zoo xscore``: train many models on many datasets with one recipe, then rank them by the paper's xScore.

    zoo xscore --models paper-peers emov2_1m lwganet_l0 --suite embedded [--out runs/xscore]
    zoo xscore --models emov2_1m mobilenetv3_small_100 --datasets ~/data/cifar10 ~/data/flowers
    zoo xscore --models paper-peers emov2_1m --suite embedded --shard 3/8 --out runs/xs   # one share of the grid
    zoo xscore --table runs/xs                          # merge the cells of a folder (all shards), then report
    zoo xscore --table results.csv                      # report on a finished table (or a paper's), no training

xScore, G, V and the k-dataset estimate are defined in :mod:`zoo.xscore` (arXiv 2511.00335). ``paper-peers`` names
the paper's architectures as configurations of about 2.5 M parameters (:mod:`zoo.backbones.xscore_peers`).

**Recipe per dataset size.** Every cell is trained by the training engine (``train.engine.fit``) with its defaults
(AdamW, weight decay 0.05, cosine schedule stepped per update, label smoothing 0.1, no EMA or mixup) and the
epochs, batch size, peak learning rate and warm-up of the size tier its training split falls in
(:data:`SIZE_TIERS`): small datasets get many epochs so that every cell takes several hundred optimizer steps,
large ones few. ``--epochs``, ``--batch-size`` and ``--lr`` override every tier. Input size (``--img-size``):
``auto`` (default) trains each model at the smallest of :data:`AUTO_SIZES` it accepts (32x32 for most, which holds
every embedded image at its native size or larger; LWGANet needs 96x96); ``common`` gives every model the largest
of those minimums; a number fixes it. The table's accuracy is the validation top-1 after the *last* epoch, the
only epoch validated (the validation split is the test split here: picking a best epoch on it would flatter every
model). ``--max-train N`` cuts each training split to a fixed class-stratified subset (the same images for every
model); the tier follows the images actually trained on.

**Cells, shards and the shared table.** Each finished (model, dataset) cell is written as its own file,
``OUT/cells/<model>__<dataset>.json`` (temp file + rename), so any number of processes can fill one folder at once
without a lock; a cell already there is skipped, and a cell interrupted mid-training continues from its engine
state (``OUT/runs/<model>__<dataset>/``). ``--shard K/N`` trains only cells K, K+N, K+2N, ... of the grid sorted
by (model, dataset) name, so N processes given the same models and datasets split it without overlap and without
talking to each other (``--shard torchrun`` takes K and N from torchrun's RANK and WORLD_SIZE and keeps the
engine from starting distributed training). ``OUT/results.csv`` is the merged table: written by an unsharded run,
by the shard that finds the grid complete, or by ``zoo xscore --table OUT``. The recipe is stored in
``OUT/recipe.json``; a run with a different recipe into the same folder is refused, so a table never mixes
budgets. Outputs: ``results.csv`` (long form), ``table.csv`` (wide), ``xscore.json`` (every component, the
k-dataset estimate, parameters and MACs, the recipe), ``xscore.txt``, ``xscore.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zoo.backbones.xscore_peers import PAPER_PEERS, PEERS_ALIAS, expand_models
from zoo.checkpoint import atomic_write_bytes
from zoo.errors import ConfigError, DataError
from zoo.xscore import (
    DEFAULT_LAMBDA,
    SubsetEstimate,
    XScoreReport,
    compute_xscore,
    read_table_csv,
    subset_estimate,
    table_from_records,
)

AUTO_SIZES = (32, 64, 96, 128, 160, 192, 224)
RESULT_FIELDS = ["model", "dataset", "accuracy", "tier", "epochs", "batch_size", "lr", "warmup_epochs", "steps",
                 "img_size", "seed", "params", "train_images", "val_images", "seconds", "cpu_seconds"]


# ------------------------------------------------------------------------------------------------ recipe
@dataclass(frozen=True)
class SizeTier:
    """Training budget for datasets whose training split has fewer than ``below`` images (None: no bound)."""

    name: str
    below: int | None
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: int


# Chosen so that every model of the embedded grid lands well above chance on every embedded dataset. Each cell
# takes several hundred optimizer steps: 160 face crops x 40 epochs / 16 = 400 steps; 576 texture patches x 12 / 16
# = 432; digits 1,438 x 15 / 32 = 675; mnist5k 4,000 x 6 / 32 = 750. The peak learning rate is 1e-2 because at 2e-3
# the BatchNorm inverted-residual peers (EfficientNet, TinyNet, MobileNet, FBNet, MobileOne) barely left their
# initialisation in a few hundred steps (digits: FBNet 0.153, MobileOne 0.164; at 1e-2 and 675 steps 0.71 and 0.91).
# They start from timm's fan-out init, with large depthwise kernels (mean |w| 0.27-0.75); behind BatchNorm only a
# weight's direction matters and AdamW moves each weight by about lr per step, so large weights turn slowly. The
# small tier (batch 16) takes 5e-3: at 1e-2 EMOv2 fell to 0.61 on textures (1.00 at 2e-3, 0.99 at 5e-3).
# Datasets of the paper's size keep 2e-3 over 30 epochs (the paper trains 100): thousands of steps, not hundreds.
SIZE_TIERS: tuple[SizeTier, ...] = (
    SizeTier("tiny", 400, epochs=40, batch_size=16, lr=1e-2, warmup_epochs=4),
    SizeTier("small", 1000, epochs=12, batch_size=16, lr=5e-3, warmup_epochs=2),
    SizeTier("medium", 2000, epochs=15, batch_size=32, lr=1e-2, warmup_epochs=1),
    SizeTier("large", 20000, epochs=6, batch_size=32, lr=1e-2, warmup_epochs=1),
    SizeTier("full", None, epochs=30, batch_size=64, lr=2e-3, warmup_epochs=2),
)


@dataclass(frozen=True)
class CellPlan:
    """What one cell trains with: its tier's budget after the recipe's overrides."""

    tier: str
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: int

    def steps(self, n_train: int) -> int:
        return self.epochs * math.ceil(n_train / self.batch_size)


@dataclass(frozen=True)
class Recipe:
    """The one training recipe every cell shares; stored next to the results so a table never mixes budgets.

    ``img_size``: ``"auto"`` (each model at the smallest of :data:`AUTO_SIZES` it accepts) or a number as text.
    ``epochs`` / ``batch_size`` / ``lr``: None keeps each size tier's value, a number overrides every tier.
    ``max_train``: training images kept per dataset (0: all).
    """

    img_size: str = "auto"
    seed: int = 0
    augment: bool = True
    max_train: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    tiers: tuple[SizeTier, ...] = SIZE_TIERS

    def size_for(self, model: str) -> int:
        """The input size ``model`` trains at under this recipe."""
        return smallest_size(model) if self.img_size == "auto" else int(self.img_size)

    def plan(self, n_train: int) -> CellPlan:
        """The budget of a dataset with ``n_train`` training images."""
        tier = next(t for t in self.tiers if t.below is None or n_train < t.below)
        epochs = self.epochs if self.epochs is not None else tier.epochs
        warmup = min(tier.warmup_epochs, max(epochs - 1, 0)) if self.epochs is None else (1 if epochs >= 3 else 0)
        batch = min(self.batch_size or tier.batch_size, max(n_train, 1))  # a split smaller than a batch: one batch
        return CellPlan(tier.name, epochs, batch, self.lr or tier.lr, warmup)

    def overrides(self, img_size: int, plan: CellPlan) -> dict[str, Any]:
        return {
            "data.img_size": img_size, "data.batch_size": plan.batch_size, "data.augment": self.augment,
            "data.workers": 0, "optim.lr": plan.lr, "train.epochs": plan.epochs, "train.seed": self.seed,
            "sched.warmup_epochs": plan.warmup_epochs, "train.progress": False,
            "train.val_every": plan.epochs,  # validate once, after the last epoch: the table's number
        }

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def describe(self) -> dict[str, Any]:
        """The recipe in words and numbers, for the report: what every cell shared."""
        return {**self.to_json(), "optimizer": "AdamW (engine default), weight decay 0.05",
                "schedule": "cosine per update after a linear warm-up of the tier's warm-up epochs",
                "label_smoothing": 0.1,
                "validation": "whole validation split, once after the last epoch (the table's accuracy)",
                "train_subset": ("all training images" if not self.max_train else
                                 f"at most {self.max_train} training images per dataset: a fixed class-stratified "
                                 "subset (seed 0), the same for every model"),
                "input_size": ("each model at the smallest of " + ", ".join(map(str, AUTO_SIZES)) + " it accepts"
                               if self.img_size == "auto" else f"{self.img_size}x{self.img_size} for every model")}


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the comparison: an embedded one (by name) or an image folder (``root``)."""

    name: str
    root: str | None = None


# ------------------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo xscore",
        description="Train each model on each dataset with one recipe, then rank the models by xScore "
                    "(G - lambda*V of per-dataset min-max accuracies; arXiv 2511.00335; zoo/xscore.py).",
    )
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help=f"LightZoo or timm model names; {PEERS_ALIAS} adds the paper's peer set "
                        f"({', '.join(PAPER_PEERS)})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--suite", choices=["embedded"], help="the offline datasets bundled with installed packages")
    src.add_argument("--datasets", nargs="+", metavar="DIR", help="image folders: DIR/train/<class>/*, DIR/val/...")
    src.add_argument("--table", metavar="CSV|DIR",
                     help="report on this results table, or merge the cells of this output folder; no training")
    p.add_argument("--only", nargs="+", metavar="NAME", help="with --suite: use only these embedded datasets")
    p.add_argument("--shard", metavar="K/N|torchrun",
                   help="train only share K of N of the (model, dataset) cells (K = 1..N); torchrun: K-1 = RANK, "
                        "N = WORLD_SIZE")
    p.add_argument("--epochs", type=int, default=None, help="epochs per cell for every dataset (default: by size)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size for every dataset (default: by size)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate for every dataset (default: by size)")
    p.add_argument("--img-size", default="auto", metavar="auto|common|N",
                   help="square input size; auto (default): each model at the smallest of "
                        f"{', '.join(map(str, AUTO_SIZES))} it accepts; common: one size for all, the smallest "
                        "that every model accepts; N: every model at N")
    p.add_argument("--max-train", type=int, default=0, metavar="N",
                   help="training images kept per dataset (fixed class-stratified subset, the same for every "
                        "model; 0, the default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="switch off the datasets' training augmentation")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/xscore; with --table: the table's)")
    p.add_argument("--lam", type=float, default=DEFAULT_LAMBDA,
                   help=f"lambda, the weight of the variance penalty in xScore = G - lambda*V (default "
                        f"{DEFAULT_LAMBDA})")
    p.add_argument("--k", type=int, default=4, help="datasets in the k-dataset estimate (default 4, the paper's)")
    p.add_argument("--imagenet-top1", nargs="+", default=[], metavar="NAME=TOP1",
                   help="ImageNet top-1 (percent) for models the weights manifest does not list")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-plots", action="store_true")
    return p


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 1 <= K <= N; ``"torchrun"`` -> (RANK + 1, WORLD_SIZE); None -> None."""
    if text is None:
        return None
    if text == "torchrun":
        env = os.environ if env is None else env
        if "RANK" not in env or "WORLD_SIZE" not in env:
            raise ConfigError("--shard torchrun needs RANK and WORLD_SIZE in the environment (run it under torchrun)")
        return int(env["RANK"]) + 1, int(env["WORLD_SIZE"])
    k, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        kk, nn = int(k), int(n)
    except ValueError:
        raise ConfigError(f"--shard expects K/N (e.g. 2/8) or torchrun, got {text!r}") from None
    if not 1 <= kk <= nn:
        raise ConfigError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return kk, nn


def shard_cells(cells: Sequence[tuple[str, str]], shard: tuple[int, int] | None) -> list[tuple[str, str]]:
    """Shard K of N: cells K, K+N, ... of the grid sorted by (model, dataset); the order the caller gave is
    irrelevant, so every shard of the same models and datasets computes the same split."""
    ordered = sorted(set(cells))
    if shard is None:
        return ordered
    k, n = shard
    return [c for i, c in enumerate(ordered) if i % n == k - 1]


def _dataset_specs(args: argparse.Namespace) -> list[DatasetSpec]:
    if args.suite == "embedded":
        from zoo.data.embedded import EMBEDDED_SUITE, _check_name

        names = [_check_name(n) for n in args.only] if args.only else list(EMBEDDED_SUITE)
        return [DatasetSpec(n) for n in names]
    if args.only:
        raise ConfigError("--only selects embedded datasets; use it with --suite embedded")
    specs: list[DatasetSpec] = []
    for d in args.datasets:
        root = Path(d).expanduser()
        missing = [s for s in ("train", "val") if not (root / s).is_dir()]
        if missing:
            raise DataError(f"dataset folder {str(root)!r} has no {' or '.join(missing)} folder "
                            f"(expected {root}/train/<class>/*.png and {root}/val/<class>/*.png)")
        name = root.resolve().name
        taken = {s.name for s in specs}
        if name in taken:  # two folders with the same last name: qualify by the parent
            name = f"{root.resolve().parent.name}_{name}"
        if name in taken:
            raise DataError(f"two datasets are both called {name!r}; give them distinct folder names")
        specs.append(DatasetSpec(name, str(root.resolve())))
    return specs


def _parse_top1(items: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--imagenet-top1 expects NAME=TOP1 (e.g. emov2_1m=72.3), got {item!r}") from None
    return out


# ImageNet-1k top-1 reported in papers for models that have no released weights (so no manifest entry):
# ULSAM (Saini et al., WACV 2020) table rows, as quoted in zoo/backbones/ulsam_mobilenet.py.
PAPER_TOP1: dict[str, float] = {"mobilenetv1_ulsam": 70.43, "mobilenetv2_ulsam": 71.52}


def imagenet_top1(models: Sequence[str], extra: Mapping[str, float]) -> dict[str, float]:
    """ImageNet-1k top-1 (percent) per model: ``--imagenet-top1`` first, then the manifest's plain ``in1k`` entry
    (not the distilled one), then :data:`PAPER_TOP1`; models with none are left out of the scatter plot."""
    from zoo.manifest import entries_for

    out: dict[str, float] = {}
    for m in models:
        if m in extra:
            out[m] = float(extra[m])
            continue
        try:
            entries = entries_for(m)
        except Exception:  # an unreadable manifest only costs the scatter plot
            entries = []
        for e in entries:
            if e.get("tag") == "in1k" and e.get("top1") is not None:
                out[m] = float(e["top1"])
                break
        if m not in out and m in PAPER_TOP1:
            out[m] = PAPER_TOP1[m]
    return out


_SMALLEST: dict[tuple[str, tuple[int, ...]], int] = {}


def smallest_size(model: str, sizes: Sequence[int] = AUTO_SIZES) -> int:
    """The smallest candidate size ``model`` runs at (one forward pass per size tried, batch 1, no gradients).

    Models differ: EMOv2 and the CIFAR-style PHC-ResNets take 32x32, LWGANet needs at least 96x96 (its stride-3 blur
    pool). Cached per process, since every cell of a model asks.
    """
    key = (model, tuple(sizes))
    if key not in _SMALLEST:
        import torch

        import zoo

        net = zoo.create_model(model, num_classes=2).eval()
        for s in sizes:
            try:
                with torch.no_grad():
                    net(torch.zeros(1, 3, s, s))
            except (ValueError, RuntimeError):
                continue
            _SMALLEST[key] = s
            break
        else:
            raise ConfigError(f"{model} runs at none of the sizes {list(sizes)}; pass --img-size N")
    return _SMALLEST[key]


def smallest_common_size(models: Sequence[str], sizes: Sequence[int] = AUTO_SIZES) -> int:
    """The smallest candidate size every model runs at: the largest of the models' minimums (``--img-size
    common``). Assumes a model that runs at a size also runs at the larger candidates, true of the zoo's models."""
    return max(smallest_size(m, sizes) for m in models)


def model_costs(models: Sequence[str], sizes: Mapping[str, int], num_classes: int = 10) -> dict[str, dict[str, int]]:
    """Parameters (at ``num_classes``) and MACs (batch 1, at the model's training size, else 224) of every model
    that can be built by name; names that are not models (a paper's table) are left out."""
    import timm

    import zoo
    from zoo.bench import count_macs, count_params
    from zoo.registry import list_models

    ours = set(list_models())
    out: dict[str, dict[str, int]] = {}
    for m in models:
        if m not in ours and not timm.is_model(m):
            continue
        size = int(sizes.get(m, 224))
        net = zoo.create_model(m, num_classes=num_classes)
        out[m] = {"params": count_params(net), "macs": count_macs(net, (3, size, size)), "img_size": size,
                  "num_classes": num_classes}
    return out


def _short(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


# ------------------------------------------------------------------------------------------------ cells
def cell_key(model: str, dataset: str) -> str:
    return f"{model}__{dataset}"


def cell_path(out: Path, model: str, dataset: str) -> Path:
    return out / "cells" / f"{cell_key(model, dataset)}.json"


def write_cell(out: Path, row: Mapping[str, Any]) -> Path:
    """One finished cell as its own JSON file, written atomically: concurrent shards never touch the same file."""
    path = cell_path(out, str(row["model"]), str(row["dataset"]))
    data = json.dumps(dict(row), indent=1) + "\n"

    def _write(tmp: str) -> None:
        Path(tmp).write_text(data)

    atomic_write_bytes(path, _write)
    return path


def read_cells(out: Path) -> list[dict[str, Any]]:
    """Every finished cell of an output folder: ``results.csv`` rows overlaid by ``cells/*.json`` (the newer
    form), sorted by (model, dataset)."""
    rows = {(r["model"], r["dataset"]): dict(r) for r in read_results(out / "results.csv")}
    cells_dir = out / "cells"
    if cells_dir.is_dir():
        for p in sorted(cells_dir.glob("*.json")):
            try:
                r = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"unreadable cell file {p}: {e}; delete it to train that cell again") from e
            rows[(str(r["model"]), str(r["dataset"]))] = r
    return [rows[k] for k in sorted(rows)]


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_results(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite the whole file atomically, so an interruption never leaves half a row."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)

    atomic_write_bytes(path, _write)


def _check_recipe(out: Path, recipe: Recipe) -> None:
    path = out / "recipe.json"
    mine = recipe.to_json()
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in diff.items())
            raise ConfigError(f"{out} holds results of another recipe ({shown}); use another --out or the same "
                              f"options, so one table never mixes training budgets")
    else:  # shards may race here: each writes the same content atomically
        text = json.dumps(mine, indent=2) + "\n"
        atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


# ------------------------------------------------------------------------------------------------ training
def _cell_config(model: str, spec: DatasetSpec, run_dir: Path) -> dict[str, Any]:
    return {"task": "classification", "out_dir": str(run_dir), "model": {"name": model},
            "data": {"dataset": spec.name if spec.root is None else "folder", "root": spec.root}}


def _bundle(spec: DatasetSpec, recipe: Recipe, img_size: int) -> Any:
    """The DataBundle of one dataset at ``img_size`` with the recipe's training-image cap."""
    from zoo.data.build import DataBundle

    cap = recipe.max_train or None
    if spec.root is not None:
        from torch.utils.data import Subset

        from zoo.config import load_config
        from zoo.data.build import build_classification_data
        from zoo.data.embedded import stratified_subset

        provisional = recipe.plan(0)  # the bundle holds datasets only; the batch size is applied by the engine
        cfg = load_config(_cell_config("x", spec, Path(".")), recipe.overrides(img_size, provisional))
        full = build_classification_data(cfg, None)
        if cap is None or cap >= len(full.train):
            return full
        keep = stratified_subset(full.train.targets, cap).tolist()  # ImageFolder's labels, read without decoding
        full.train = Subset(full.train, keep)
        return full
    from zoo.data.embedded import embedded_splits

    train, val = embedded_splits(spec.name, img_size=img_size, in_chans=3, augment=recipe.augment, max_train=cap)
    return DataBundle(train, val, num_classes=len(train.classes), class_names=list(train.classes), in_chans=3,
                      mean=train.mean, std=train.std, color="gray")


def train_cell(model: str, spec: DatasetSpec, recipe: Recipe, run_dir: Path, data: Any = None,
               img_size: int | None = None) -> dict[str, Any]:
    """Train ``model`` on one dataset with the recipe's plan for that dataset's size; continue from the cell's
    engine state if one exists.

    Returns the results row, or ``{"interrupted": True}`` when a signal stopped the engine (its state is saved).
    """
    from zoo.bench import count_params
    from zoo.errors import CheckpointError

    from ..engine import STATE_FILE, fit

    size = recipe.size_for(model) if img_size is None else img_size
    if data is None:
        data = _bundle(spec, recipe, size)
    plan = recipe.plan(len(data.train))
    config = _cell_config(model, spec, run_dir)
    overrides = recipe.overrides(size, plan)
    t0, c0 = time.perf_counter(), time.process_time()
    state = run_dir / STATE_FILE
    result = None
    if state.is_file():
        try:
            result = fit(config, overrides, resume=state, data=data, quiet=True)
        except CheckpointError as e:
            print(f"  (cannot continue the interrupted cell: {e}; training it again)", file=sys.stderr)
    if result is None:
        result = fit(config, overrides, data=data, quiet=True)
    if result.get("interrupted"):
        return {"interrupted": True}
    last = result["history"][-1]
    if "val_top1" not in last:
        raise DataError(f"the engine reported no validation top-1 for {model} on {spec.name}")
    net = result.get("model")
    return {
        "model": model, "dataset": spec.name, "accuracy": float(last["val_top1"]), "tier": plan.tier,
        "epochs": plan.epochs, "batch_size": plan.batch_size, "lr": plan.lr, "warmup_epochs": plan.warmup_epochs,
        "steps": plan.steps(len(data.train)), "img_size": size, "seed": recipe.seed,
        "params": count_params(net) if net is not None else "", "train_images": len(data.train),
        "val_images": len(data.val), "seconds": round(time.perf_counter() - t0, 2),
        "cpu_seconds": round(time.process_time() - c0, 2),
    }


# ------------------------------------------------------------------------------------------------ report
def write_report(report: XScoreReport, out: Path, k: int, top1: Mapping[str, float], plots: bool,
                 recipe: Mapping[str, Any] | None = None, costs: Mapping[str, Mapping[str, int]] | None = None,
                 ) -> tuple[list[Path], SubsetEstimate]:
    """xscore.json, xscore.txt, xscore.md, table.csv and the plots; returns the paths written and the estimate.

    ``recipe``: how the table was trained, copied into xscore.json so the numbers never travel without their
    budget. ``costs``: parameters and MACs per model (:func:`model_costs`). Plots are skipped, with a message, when
    matplotlib is missing.
    """
    out.mkdir(parents=True, exist_ok=True)
    costs = dict(costs or {})
    k_eff = min(k, len(report.datasets))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = subset_estimate(report.accuracy, report.models, report.datasets, k=k_eff, lam=report.lam)
    payload = report.to_dict()
    payload["subset_estimate"] = est.to_dict()
    payload["model_costs"] = costs
    payload["imagenet_top1"] = {m: top1[m] for m in report.models if m in top1}
    payload["recipe"] = dict(recipe) if recipe else None
    written = [out / "xscore.json", out / "xscore.txt", out / "xscore.md", out / "table.csv"]
    (out / "xscore.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [report.format(_cost_columns(costs)), "", est.format(), "",
             f"{'k':>3} {'best R2':>8} {'mean R2':>8} {'subsets':>8}  best subset"]
    for p in est.curve:
        lines.append(f"{p.k:>3} {p.best_r2:>8.3f} {p.mean_r2:>8.3f} {p.n_subsets:>8}  "
                     f"{', '.join(p.best_subset)}{'' if p.exhaustive else ' (sampled)'}")
    lines += [f"note: {w.message}" for w in caught]
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *report.datasets])
        for m, row in zip(report.models, report.accuracy.tolist()):
            w.writerow([m, *row])
    if recipe:
        lines += ["", "Recipe: " + json.dumps(dict(recipe))]
    (out / "xscore.txt").write_text("\n".join(lines) + "\n")
    (out / "xscore.md").write_text(markdown_table(report, est, costs))
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install matplotlib); the tables are written",
                  file=sys.stderr)
        else:
            written += make_plots(report, est, top1, out)
    return written, est


def _cost_columns(costs: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, str]]:
    if not costs:
        return {}
    return {"params": {m: _short(c["params"]) for m, c in costs.items()},
            "MACs": {m: f"{_short(c['macs'])}@{c['img_size']}" for m, c in costs.items()}}


def markdown_table(report: XScoreReport, est: SubsetEstimate | None = None,
                   costs: Mapping[str, Mapping[str, int]] | None = None) -> str:
    """The ranking with every accuracy as a Markdown table (what the docs paste), best model first."""
    costs = dict(costs or {})
    idx = {m: i for i, m in enumerate(report.models)}
    cost_head = " params | MACs |" if costs else ""
    lines = ["| # | model | " + " | ".join(report.datasets) + f" | mean | worst | G | V | xScore |{cost_head}",
             "|---|---|" + "---|" * (len(report.datasets) + 5 + (2 if costs else 0))]
    for s in report.scores:
        accs = " | ".join(f"{a:.3f}" for a in report.accuracy[idx[s.model]].tolist())
        line = (f"| {s.position} | `{s.model}` | {accs} | {s.mean_accuracy:.3f} | {s.worst_accuracy:.3f} | "
                f"{s.generalisation:.3f} | {s.variance:.3f} | {s.xscore:.3f} |")
        if costs:
            c = costs.get(s.model)
            line += f" {_short(c['params'])} | {_short(c['macs'])} @{c['img_size']} |" if c else " – | – |"
        lines.append(line)
    w = "n/a" if math.isnan(report.kendalls_w) else f"{report.kendalls_w:.3f}"
    lines.append("")
    lines.append(f"xScore = G − {report.lam:g}·V; Kendall's W over {len(report.datasets)} datasets: {w}.")
    if est is not None:
        f = est.fit
        terms = " + ".join(f"{c:.4g}·{d}" for c, d in zip(f.coefficients, f.datasets))
        lines.append(f"{est.k}-dataset estimate (best of {est.n_subsets} subsets): xScore ≈ {f.intercept:.4g} + "
                     f"{terms}, R² = {f.r2:.3f}; Spearman ρ with the full ranking {est.spearman_rho:.3f}"
                     + (" (fewer than k + 2 models: exact for every subset, uninformative)"
                        if est.underdetermined else "") + ".")
    return "\n".join(lines) + "\n"


def make_plots(report: XScoreReport, est: SubsetEstimate, top1: Mapping[str, float], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    models, datasets, acc = report.models, report.datasets, report.accuracy
    # 1. accuracy heat map
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(datasets), 1.2 + 0.5 * len(models)))
    im = ax.imshow(acc, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    lo, hi = float(acc.min()), float(acc.max())
    for i in range(len(models)):
        for j in range(len(datasets)):
            light = hi > lo and (acc[i, j] - lo) / (hi - lo) < 0.5
            ax.text(j, i, f"{acc[i, j]:.3g}", ha="center", va="center", fontsize=8, color="w" if light else "k")
    fig.colorbar(im, ax=ax, label="validation top-1")
    ax.set_title("accuracy per dataset")
    paths.append(_save(fig, out / "accuracy_heatmap.png"))
    # 2. ranks per dataset
    fig, ax = plt.subplots(figsize=(1.8 + 1.2 * len(datasets), 3.6))
    for i, m in enumerate(models):  # a small horizontal offset per model keeps tied ranks visible
        dx = 0.08 * (i - (len(models) - 1) / 2) / max(len(models) - 1, 1)
        ax.plot([j + dx for j in range(len(datasets))], report.ranks[i], marker="o", label=m)
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
    ax.set_ylim(len(models) + 0.5, 0.5)
    ax.set_yticks(range(1, len(models) + 1))
    ax.set_ylabel("rank (1 = best)")
    w = "n/a" if math.isnan(report.kendalls_w) else f"{report.kendalls_w:.3f}"
    ax.set_title(f"ranks per dataset (Kendall's W = {w})")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "ranks.png"))
    # 3. xScore vs ImageNet top-1, for the models with a reported figure
    known = [s for s in report.scores if s.model in top1]
    if known:
        fig, ax = plt.subplots(figsize=(5, 3.8))
        xs, ys = [top1[s.model] for s in known], [s.xscore for s in known]
        ax.scatter(xs, ys)
        for s, x, y in zip(known, xs, ys):
            ax.annotate(s.model, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("ImageNet-1k top-1 reported (%)")
        ax.set_ylabel("xScore")
        ax.set_title(f"xScore vs ImageNet top-1 ({len(known)} of {len(models)} models have one)")
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out / "xscore_vs_imagenet.png"))
    # 4. k-dataset estimate: best and mean R² per k
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ks = [p.k for p in est.curve]
    ax.plot(ks, [p.best_r2 for p in est.curve], marker="o", label="best subset")
    ax.plot(ks, [p.mean_r2 for p in est.curve], marker="s", label="mean over subsets")
    ax.set_xlabel("datasets used (k)")
    ax.set_ylabel("R² of the fit to the full xScore")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "few_datasets.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _report_recipe(recipe: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The recipe as saved, plus what each cell actually used: input size per model, images, tier, epochs and
    steps per dataset (from the results rows), and the summed training time."""
    if recipe is None:
        return None
    out = dict(recipe)

    def has(r: Mapping[str, Any], *keys: str) -> bool:
        return all(str(r.get(k, "")).strip() for k in keys)

    sizes = {r["model"]: int(r["img_size"]) for r in rows if has(r, "img_size")}
    per_dataset = {r["dataset"]: {"train": int(r["train_images"]), "val": int(r["val_images"]),
                                  **({"tier": r["tier"], "epochs": int(r["epochs"]), "steps": int(r["steps"])}
                                     if has(r, "tier", "epochs", "steps") else {})}
                   for r in rows if has(r, "train_images", "val_images")}
    secs = [float(r["seconds"]) for r in rows if has(r, "seconds")]
    out.update({"input_size_per_model": sizes, "per_dataset": per_dataset,
                "training_seconds_total": round(sum(secs), 1) if secs else None})
    return out


def _finish(report: XScoreReport, out: Path, args: argparse.Namespace, recipe: Mapping[str, Any] | None = None,
            sizes: Mapping[str, int] | None = None) -> int:
    top1 = imagenet_top1(report.models, args.top1)
    costs = model_costs(report.models, sizes or {})
    paths, est = write_report(report, out, args.k, top1, plots=not args.no_plots, recipe=recipe, costs=costs)
    print(report.format(_cost_columns(costs)))
    if costs:
        n_cls = next(iter(costs.values()))["num_classes"]
        print(f"(params with a {n_cls}-class head; MACs per image at the input size trained with)")
    print("\n" + est.format())
    low = min(((report.accuracy[i, j], m, d) for i, m in enumerate(report.models)
               for j, d in enumerate(report.datasets)))
    print(f"lowest cell: {low[1]} on {low[2]}: {low[0]:.4g}")
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _saved_recipe(folder: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    saved = folder / "recipe.json"
    if not saved.is_file():
        return None
    stored = json.loads(saved.read_text())
    try:
        tiers = tuple(SizeTier(**t) for t in stored.get("tiers", ()))
        described = Recipe(**{**stored, "tiers": tiers}).describe()
    except TypeError:  # a recipe.json of another version: report it as it is
        described = stored
    return _report_recipe(described, rows)


def _table_mode(args: argparse.Namespace) -> int:
    path = Path(args.table)
    if path.is_dir():  # an output folder: merge every shard's cells into its results.csv first
        rows = read_cells(path)
        if not rows:
            raise DataError(f"{path} holds no finished cells (cells/*.json or results.csv)")
        write_results(path / "results.csv", rows)
        folder, csv_path = path, path / "results.csv"
    else:
        folder, csv_path = path.resolve().parent, path
    table, models, datasets = read_table_csv(csv_path)
    rows = read_results(csv_path) if csv_path.suffix == ".csv" else []
    sizes = {r["model"]: int(r["img_size"]) for r in rows if str(r.get("img_size", "")).strip()}
    out = Path(args.out) if args.out else folder
    report = compute_xscore(table, models, datasets, lam=args.lam)
    return _finish(report, out, args, _saved_recipe(folder, rows), sizes)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (math.isfinite(args.lam) and args.lam >= 0):
        raise ConfigError(f"--lam must be a number >= 0, got {args.lam}")
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    args.top1 = _parse_top1(args.imagenet_top1)  # checked now, not after hours of training
    if args.table:
        return _table_mode(args)

    if not args.models:
        raise ConfigError("give --models NAME ... (or --table CSV|DIR to report on finished cells)")
    if not (args.suite or args.datasets):
        raise ConfigError("give --suite embedded or --datasets DIR ... (image folders with train/ and val/)")
    for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag} must be positive, got {v}")
    if args.lr is not None and not args.lr > 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    if args.max_train < 0:
        raise ConfigError(f"--max-train must be 0 (all images) or positive, got {args.max_train}")
    shard = parse_shard(args.shard)
    if args.shard == "torchrun":  # each process trains its own cells: keep the engine from starting DDP
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            os.environ.pop(var, None)
    from zoo.registry import check_model_name

    models = expand_models(args.models)
    for m in models:
        check_model_name(m)  # every name before the first hour of training, not after
    specs = _dataset_specs(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.img_size == "auto":
        policy = "auto"
        sizes = {m: smallest_size(m) for m in models}
        print("input sizes (each model's smallest of " + ", ".join(map(str, AUTO_SIZES)) + "): "
              + ", ".join(f"{m} {s}x{s}" for m, s in sizes.items()))
    else:
        if args.img_size == "common":
            img_size = smallest_common_size(models)
            print(f"input size {img_size}x{img_size} for every model: the smallest of {list(AUTO_SIZES)} "
                  f"that every model accepts")
        else:
            try:
                img_size = int(args.img_size)
            except ValueError:
                raise ConfigError(f"--img-size must be auto, common or a number, got {args.img_size!r}") from None
            if img_size < 8:
                raise ConfigError(f"--img-size must be at least 8, got {img_size}")
        policy = str(img_size)
        sizes = {m: img_size for m in models}
    recipe = Recipe(img_size=policy, seed=args.seed, augment=not args.no_augment, max_train=args.max_train,
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out or "runs/xscore")
    out.mkdir(parents=True, exist_ok=True)
    _check_recipe(out, recipe)

    by_name = {s.name: s for s in specs}
    grid = [(m, s.name) for s in specs for m in models]
    mine = shard_cells(grid, shard)
    done = {(r["model"], r["dataset"]) for r in read_cells(out)}
    todo = [c for c in mine if c not in done]
    label = f"shard {shard[0]}/{shard[1]}: " if shard else ""
    if len(todo) < len(mine):
        print(f"{label}{len(mine) - len(todo)} of {len(mine)} cells already in {out}; training the other "
              f"{len(todo)}")
    t_start = time.perf_counter()
    for n, (m, d) in enumerate(todo, start=1):
        spec = by_name[d]
        data = _bundle(spec, recipe, sizes[m])  # per cell: cheap (cached arrays), and no state leaks between cells
        plan = recipe.plan(len(data.train))
        print(f"{label}[{n}/{len(todo)}] {m} on {d} ({sizes[m]}x{sizes[m]}, {len(data.train)} train / "
              f"{len(data.val)} val images; {plan.tier}: {plan.epochs} epochs, batch {plan.batch_size}, "
              f"{plan.steps(len(data.train))} steps) ...", flush=True)
        row = train_cell(m, spec, recipe, out / "runs" / cell_key(m, d), data, img_size=sizes[m])
        if row.get("interrupted"):
            print(f"interrupted during {m} on {d} after {_clock(time.perf_counter() - t_start)}; its state "
                  f"is saved: run the same command to continue", file=sys.stderr)
            return 130
        write_cell(out, row)
        print(f"    top-1 {row['accuracy']:.4f}, {row['seconds']:.1f} s (cpu {row.get('cpu_seconds', 0):.1f} s); "
              f"elapsed {_clock(time.perf_counter() - t_start)}", flush=True)
    if todo:
        print(f"{label}trained {len(todo)} cells in {_clock(time.perf_counter() - t_start)}")

    rows = [r for r in read_cells(out) if (r["model"], r["dataset"]) in set(grid)]
    if len(rows) < len(grid):  # other shards still running: their cells complete the table later
        print(f"{len(rows)} of {len(grid)} cells of the grid are in {out}; when every shard has finished: "
              f"zoo xscore --table {out}")
        return 0
    write_results(out / "results.csv", read_cells(out))
    table, t_models, t_datasets = table_from_records(rows)
    report = compute_xscore(table, t_models, t_datasets, lam=args.lam)
    return _finish(report, out, args, _report_recipe(recipe.describe(), rows), sizes)


if __name__ == "__main__":
    sys.exit(main())
