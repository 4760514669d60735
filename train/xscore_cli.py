"""``zoo xscore``: train many models on many datasets with one recipe, then rank them by xScore.

    zoo xscore --models emov2_1m lwganet_l0 --suite embedded --epochs 3 [--out runs/xscore]
    zoo xscore --models emov2_1m mobilenetv3_small_100 --datasets ~/data/cifar10 ~/data/flowers --epochs 30
    zoo xscore --table results.csv                       # recompute the report from a finished table, no training

Every (model, dataset) cell is trained by the training engine (``train.engine.fit``) with the same recipe: the
engine's defaults (AdamW, lr 3e-3, weight decay 0.05, cosine schedule, label smoothing 0.1, no EMA or mixup) plus
the epochs, batch size, seed and training-image cap given here; one warm-up epoch when there are at least three
epochs, none otherwise. The accuracy in the table is the validation top-1 after the *last* epoch, and the
validation split is evaluated only then (it is also the test split here, so picking the best epoch on it would
flatter every model, and evaluating every epoch would cost time that no number in the table uses).

Input size (``--img-size``): ``auto`` (default) trains each model at the smallest of :data:`AUTO_SIZES` it
accepts: 32x32 for most models, which holds every embedded image at its native size or larger (8, 28, 25, 32
pixels), so no model is handed less information than another; models that cannot run that small (LWGANet needs
96x96) see the same images upsampled, which adds compute but no information. ``common`` trains every model at the
largest of those minimums (one size for all; a CIFAR-style ResNet then costs ~8x more at 96x96 than at 32x32);
a number sets it for all. Each row of the table records the size its model used.

Training-image cap (``--max-train N``): each dataset's training split is cut to a fixed, class-stratified subset
of N images (:func:`zoo.data.embedded.stratified_subset`, seed 0: the same images for every model and run); the
validation split stays whole. Defaults for ``--suite embedded``: 600 images per dataset in batches of 16, so the
README's 4-model, 3-epoch comparison fits 20 minutes on 2 CPU cores (about 12 measured) and still takes 113
optimizer steps per dataset: with 300 images (57 steps) or batches of 64 most cells stayed at chance level; for
``--datasets``: no cap, batches of 64.
Image-folder datasets (``DIR/train/<class>/*``, ``DIR/val/<class>/*``) are read by the engine's own folder
loader, the embedded suite by :mod:`zoo.data.embedded`.

Resumable: each finished cell is appended to ``OUT/results.csv`` (rewritten atomically) and skipped when the same
command runs again; a cell interrupted mid-training continues from its engine state (``OUT/runs/<model>__<data>/``).
The recipe is stored in ``OUT/recipe.json``, and a rerun with a different recipe into the same folder is refused, so
a table never mixes budgets. Outputs: ``results.csv`` (long form) and ``table.csv`` (wide), ``xscore.json`` (every
component, Kendall's W, the few-dataset estimate), ``xscore.txt`` (the ranking) and PNG plots (accuracy heat map,
ranks per dataset, xScore vs ImageNet top-1 where the weights manifest or ``--imagenet-top1`` knows it, and the
few-dataset agreement curve).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zoo.checkpoint import atomic_write_bytes
from zoo.errors import ConfigError, DataError
from zoo.xscore import XScoreReport, compute_xscore, few_dataset_estimate, read_table_csv, table_from_records

AUTO_SIZES = (32, 64, 96, 128, 160, 192, 224)
# The embedded suite's time-boxed defaults (see the module docstring): at most 600 training images per dataset, in
# batches of 16 (113 optimizer steps per dataset in 3 epochs; with 300 images, or at batch 64, most models stayed
# at chance level).
EMBEDDED_MAX_TRAIN = 600
EMBEDDED_BATCH_SIZE = 16
RESULT_FIELDS = ["model", "dataset", "accuracy", "best_accuracy", "best_epoch", "epochs", "img_size", "batch_size",
                 "lr", "seed", "params", "train_images", "val_images", "seconds", "cpu_seconds"]


@dataclass(frozen=True)
class Recipe:
    """The one training recipe every cell shares; stored next to the results so a table never mixes budgets.

    ``img_size``: ``"auto"`` (each model at the smallest of :data:`AUTO_SIZES` it accepts) or a number as text
    (every model at that size). ``max_train``: training images kept per dataset (0: all).
    """

    epochs: int
    img_size: str
    batch_size: int
    lr: float
    seed: int
    augment: bool
    max_train: int = 0

    def size_for(self, model: str) -> int:
        """The input size ``model`` trains at under this recipe."""
        return smallest_size(model) if self.img_size == "auto" else int(self.img_size)

    def overrides(self, img_size: int) -> dict[str, Any]:
        return {
            "data.img_size": img_size, "data.batch_size": self.batch_size, "data.augment": self.augment,
            "data.workers": 0, "optim.lr": self.lr, "train.epochs": self.epochs, "train.seed": self.seed,
            "sched.warmup_epochs": 1 if self.epochs >= 3 else 0, "train.progress": False,
            "train.val_every": self.epochs,  # validate once, after the last epoch: the table's number
        }

    def describe(self) -> dict[str, Any]:
        """The recipe in words and numbers, for the report: what every cell shared."""
        return {**asdict(self), "optimizer": "AdamW (engine default), weight decay 0.05",
                "schedule": f"cosine, {1 if self.epochs >= 3 else 0} warm-up epoch(s)", "label_smoothing": 0.1,
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
                    "(mean accuracy and rank stability across datasets; formula in zoo/xscore.py).",
    )
    p.add_argument("--models", nargs="+", metavar="NAME", help="LightZoo or timm model names")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--suite", choices=["embedded"], help="the offline datasets bundled with installed packages")
    src.add_argument("--datasets", nargs="+", metavar="DIR", help="image folders: DIR/train/<class>/*, DIR/val/...")
    src.add_argument("--table", metavar="CSV", help="recompute the report from this results table, no training")
    p.add_argument("--only", nargs="+", metavar="NAME", help="with --suite: use only these embedded datasets")
    p.add_argument("--epochs", type=int, default=3, help="epochs per cell (default 3)")
    p.add_argument("--img-size", default="auto", metavar="auto|common|N",
                   help="square input size; auto (default): each model at the smallest of "
                        f"{', '.join(map(str, AUTO_SIZES))} it accepts; common: one size for all, the smallest "
                        "that every model accepts; N: every model at N")
    p.add_argument("--max-train", type=int, default=None, metavar="N",
                   help="training images kept per dataset (fixed class-stratified subset, the same for every "
                        f"model; 0: all). Default {EMBEDDED_MAX_TRAIN} with --suite embedded, all with --datasets")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default {EMBEDDED_BATCH_SIZE} with --suite embedded, 64 with --datasets")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="switch off the datasets' training augmentation")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/xscore; with --table: the table's)")
    p.add_argument("--weight", type=float, default=0.5, help="share of the accuracy term in xScore (default 0.5)")
    p.add_argument("--k", type=int, default=4, help="subset size of the few-dataset estimate (default 4)")
    p.add_argument("--imagenet-top1", nargs="+", default=[], metavar="NAME=TOP1",
                   help="ImageNet top-1 (percent) for models the weights manifest does not list")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-plots", action="store_true")
    return p


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


# ------------------------------------------------------------------------------------------------ results file
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

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _write)


def _check_recipe(out: Path, recipe: Recipe) -> None:
    path = out / "recipe.json"
    mine = asdict(recipe)
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in diff.items())
            raise ConfigError(f"{out} holds results of another recipe ({shown}); use another --out or the same "
                              f"options, so one table never mixes training budgets")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mine, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ training
def _cell_config(model: str, spec: DatasetSpec, run_dir: Path) -> dict[str, Any]:
    return {"task": "classification", "out_dir": str(run_dir), "model": {"name": model},
            "data": {"dataset": spec.name if spec.root is None else "folder", "root": spec.root}}


def _bundle(spec: DatasetSpec, recipe: Recipe, img_size: int | None = None) -> Any:
    """The DataBundle of one dataset at ``img_size`` with the recipe's training-image cap.

    None for an uncapped image folder: the engine builds that from the config itself.
    """
    from .data import DataBundle

    size = int(recipe.img_size) if img_size is None else img_size
    cap = recipe.max_train or None
    if spec.root is not None:
        if cap is None:
            return None
        from torch.utils.data import Subset

        from zoo.data.embedded import stratified_subset

        from .config import load_config
        from .data import build_classification_data

        cfg = load_config(_cell_config("x", spec, Path(".")), recipe.overrides(size))
        full = build_classification_data(cfg, None)
        if cap >= len(full.train):
            return full
        keep = stratified_subset(full.train.targets, cap).tolist()  # ImageFolder's labels, read without decoding
        full.train = Subset(full.train, keep)
        return full
    from zoo.data.embedded import embedded_splits

    train, val = embedded_splits(spec.name, img_size=size, in_chans=3, augment=recipe.augment, max_train=cap)
    return DataBundle(train, val, num_classes=len(train.classes), class_names=list(train.classes), in_chans=3,
                      mean=train.mean, std=train.std, color="gray")


def train_cell(model: str, spec: DatasetSpec, recipe: Recipe, run_dir: Path, data: Any = None,
               img_size: int | None = None) -> dict[str, Any]:
    """Train ``model`` on one dataset with the recipe; continue from the cell's engine state if one exists.

    ``img_size``: the model's size under the recipe (``recipe.size_for(model)`` when not given).
    Returns the results row, or ``{"interrupted": True}`` when a signal stopped the engine (its state is saved).
    """
    from zoo.bench import count_params
    from zoo.errors import CheckpointError

    from .engine import STATE_FILE, fit

    size = recipe.size_for(model) if img_size is None else img_size
    config = _cell_config(model, spec, run_dir)
    overrides = recipe.overrides(size)
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
    n_train = n_val = ""
    if data is not None:
        n_train, n_val = len(data.train), len(data.val)
    return {
        "model": model, "dataset": spec.name, "accuracy": float(last["val_top1"]),
        "best_accuracy": float(result["best"]) if result.get("best") is not None else "",
        "best_epoch": result.get("best_epoch") or "", "epochs": recipe.epochs, "img_size": size,
        "batch_size": recipe.batch_size, "lr": recipe.lr, "seed": recipe.seed,
        "params": count_params(net) if net is not None else "", "train_images": n_train, "val_images": n_val,
        "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
    }


# ------------------------------------------------------------------------------------------------ report
def write_report(report: XScoreReport, out: Path, k: int, top1: Mapping[str, float], plots: bool,
                 recipe: Mapping[str, Any] | None = None) -> list[Path]:
    """xscore.json, xscore.txt, table.csv and the plots; returns the paths written.

    ``recipe``: how the table was trained (:meth:`Recipe.describe` plus per-model sizes and per-dataset image
    counts), copied into xscore.json so the numbers never travel without their budget. Plots are skipped, with a
    message, when matplotlib is missing.
    """
    out.mkdir(parents=True, exist_ok=True)
    k_eff = min(k, len(report.datasets))
    few = few_dataset_estimate(report.accuracy, report.datasets, k=k_eff, weight=report.weight)
    payload = report.to_dict()
    payload["few_dataset_estimate"] = few.to_dict()
    payload["imagenet_top1"] = {m: top1[m] for m in report.models if m in top1}
    payload["recipe"] = dict(recipe) if recipe else None
    written = [out / "xscore.json", out / "xscore.txt", out / "xscore.md", out / "table.csv"]
    (out / "xscore.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [report.format(), "", f"Few-dataset estimate: best {k_eff} of {len(report.datasets)} datasets "
             f"{', '.join(few.best_subset)} (Spearman rho {few.best_rho:.3f} with the full ranking)", "",
             f"{'k':>3} {'best rho':>9} {'mean rho':>9} {'worst rho':>9} {'subsets':>8}  best subset"]
    for a in few.per_k:
        lines.append(f"{a.k:>3} {a.best_rho:>9.3f} {a.mean_rho:>9.3f} {a.worst_rho:>9.3f} {a.n_subsets:>8}  "
                     f"{', '.join(a.best_subset)}{'' if a.exhaustive else ' (sampled)'}")
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *report.datasets])
        for m, row in zip(report.models, report.accuracy.tolist()):
            w.writerow([m, *row])
    if recipe:
        lines += ["", "Recipe: " + json.dumps(dict(recipe))]
    (out / "xscore.txt").write_text("\n".join(lines) + "\n")
    (out / "xscore.md").write_text(markdown_table(report))
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install matplotlib); the tables are written",
                  file=sys.stderr)
        else:
            written += make_plots(report, few, top1, out)
    return written


def markdown_table(report: XScoreReport) -> str:
    """The ranking with every accuracy as a Markdown table (what a README pastes), best model first."""
    idx = {m: i for i, m in enumerate(report.models)}
    lines = ["| # | model | " + " | ".join(report.datasets) + " | mean | worst | stability | xScore |",
             "|---|---|" + "---|" * (len(report.datasets) + 4)]
    for s in report.scores:
        accs = " | ".join(f"{a:.3f}" for a in report.accuracy[idx[s.model]].tolist())
        lines.append(f"| {s.position} | `{s.model}` | {accs} | {s.mean_accuracy:.3f} | {s.worst_accuracy:.3f} | "
                     f"{s.rank_stability:.3f} | {s.xscore:.3f} |")
    w = "n/a" if math.isnan(report.kendalls_w) else f"{report.kendalls_w:.3f}"
    lines.append("")
    lines.append(f"Kendall's W over {len(report.datasets)} datasets: {w} (xScore weight w = {report.weight}).")
    return "\n".join(lines) + "\n"


def make_plots(report: XScoreReport, few: Any, top1: Mapping[str, float], out: Path) -> list[Path]:
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
    # 4. few-dataset agreement
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ks = [a.k for a in few.per_k]
    ax.plot(ks, [a.best_rho for a in few.per_k], marker="o", label="best subset")
    ax.plot(ks, [a.mean_rho for a in few.per_k], marker="s", label="mean over subsets")
    ax.set_xlabel("datasets used (k)")
    ax.set_ylabel("Spearman rho with the full ranking")
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


def _finish(report: XScoreReport, out: Path, args: argparse.Namespace,
            recipe: Mapping[str, Any] | None = None) -> int:
    top1 = imagenet_top1(report.models, args.top1)
    paths = write_report(report, out, args.k, top1, plots=not args.no_plots, recipe=recipe)
    print(report.format())
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


# ------------------------------------------------------------------------------------------------ main
def _report_recipe(recipe: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The recipe as saved, plus what each cell actually used: the input size per model and the number of
    training / validation images per dataset (from the results rows), and the summed training time."""
    if recipe is None:
        return None
    out = dict(recipe)
    sizes = {r["model"]: int(r["img_size"]) for r in rows if str(r.get("img_size", "")).strip()}
    images = {r["dataset"]: {"train": int(r["train_images"]), "val": int(r["val_images"])}
              for r in rows if str(r.get("train_images", "")).strip() and str(r.get("val_images", "")).strip()}
    secs = [float(r["seconds"]) for r in rows if str(r.get("seconds", "")).strip()]
    out.update({"input_size_per_model": sizes, "images_per_dataset": images,
                "training_seconds_total": round(sum(secs), 1) if secs else None})
    return out


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.weight <= 1.0:
        raise ConfigError(f"--weight must lie in [0, 1], got {args.weight}")
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    args.top1 = _parse_top1(args.imagenet_top1)  # checked now, not after hours of training
    if args.table:
        table, models, datasets = read_table_csv(args.table)
        out = Path(args.out) if args.out else Path(args.table).resolve().parent
        saved = Path(args.table).resolve().parent / "recipe.json"  # a runner's folder: keep its recipe
        recipe_meta = None
        if saved.is_file():
            stored = json.loads(saved.read_text())
            try:
                described = Recipe(**stored).describe()
            except TypeError:  # a recipe.json of another version: report it as it is
                described = stored
            recipe_meta = _report_recipe(described, read_results(Path(args.table)))
        return _finish(compute_xscore(table, models, datasets, weight=args.weight), out, args, recipe_meta)

    if not args.models:
        raise ConfigError("give --models NAME ... (or --table CSV to recompute a finished table)")
    if not (args.suite or args.datasets):
        raise ConfigError("give --suite embedded or --datasets DIR ... (image folders with train/ and val/)")
    batch_size = args.batch_size if args.batch_size is not None else (EMBEDDED_BATCH_SIZE if args.suite else 64)
    if args.epochs < 1 or batch_size < 1:
        raise ConfigError("--epochs and --batch-size must be positive")
    max_train = args.max_train if args.max_train is not None else (EMBEDDED_MAX_TRAIN if args.suite else 0)
    if max_train < 0:
        raise ConfigError(f"--max-train must be 0 (all images) or positive, got {max_train}")
    from zoo.registry import check_model_name

    models = list(dict.fromkeys(args.models))
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
    recipe = Recipe(args.epochs, policy, batch_size, args.lr, args.seed, not args.no_augment, max_train)
    out = Path(args.out or "runs/xscore")
    _check_recipe(out, recipe)

    results_path = out / "results.csv"
    rows = read_results(results_path)
    done = {(r["model"], r["dataset"]) for r in rows}
    todo = [(m, s) for s in specs for m in models if (m, s.name) not in done]
    total = len(models) * len(specs)
    if len(todo) < total:
        print(f"{total - len(todo)} of {total} cells already in {results_path}; training the other {len(todo)}")
    t_start = time.perf_counter()
    for n, (m, spec) in enumerate(todo, start=1):
        data = _bundle(spec, recipe, sizes[m])  # per cell: cheap (cached arrays), and no state leaks between cells
        imgs = f", {len(data.train)} train / {len(data.val)} val images" if data is not None else ""
        print(f"[{n}/{len(todo)}] {m} on {spec.name} ({sizes[m]}x{sizes[m]}{imgs}) ...", flush=True)
        row = train_cell(m, spec, recipe, out / "runs" / f"{m}__{spec.name}", data, img_size=sizes[m])
        if row.get("interrupted"):
            print(f"interrupted during {m} on {spec.name} after {_clock(time.perf_counter() - t_start)}; its state "
                  f"is saved: run the same command to continue", file=sys.stderr)
            return 130
        rows.append(row)
        write_results(results_path, rows)
        print(f"    top-1 {row['accuracy']:.4f}, {row['seconds']:.1f} s (cpu {row.get('cpu_seconds', 0):.1f} s); "
              f"elapsed {_clock(time.perf_counter() - t_start)}", flush=True)
    if todo:
        print(f"trained {len(todo)} cells in {_clock(time.perf_counter() - t_start)}")

    # the table in the order asked for, whatever order earlier runs appended their cells in
    order = {(m, s.name): (j, i) for i, m in enumerate(models) for j, s in enumerate(specs)}
    mine = sorted((r for r in rows if (r["model"], r["dataset"]) in order),
                  key=lambda r: order[r["model"], r["dataset"]])
    table, t_models, t_datasets = table_from_records(mine)
    report = compute_xscore(table, t_models, t_datasets, weight=args.weight)
    return _finish(report, out, args, _report_recipe(recipe.describe(), mine))


if __name__ == "__main__":
    sys.exit(main())
