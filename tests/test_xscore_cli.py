"""``zoo xscore``: recompute from a table, resume from a pre-seeded results file, one real tiny training cell."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zoo.train.xscore_cli as cli

from zoo.errors import ConfigError, DataError, UnknownModelError
from zoo.xscore import compute_xscore

PNG = b"\x89PNG\r\n\x1a\n"


def _image_folder(root: Path, n_train: int = 8, n_val: int = 4, size: int = 32) -> Path:
    """Two classes a network can tell apart at once: dark and bright images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, level in (("dark", 40), ("bright", 210)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                px = np.clip(level + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")
    return root


def test_table_mode_writes_report_and_plots(tmp_path: Path) -> None:
    table = tmp_path / "paper.csv"
    table.write_text("model,cifar10,flowers,pets,chest\na,90,80,70,60\nb,85,82,72,50\nc,80,70,60,65\n")
    out = tmp_path / "report"
    assert cli.main(["--table", str(table), "--out", str(out), "--imagenet-top1", "a=75.0", "c=70.5"]) == 0
    payload = json.loads((out / "xscore.json").read_text())
    ref = compute_xscore([[90, 80, 70, 60], [85, 82, 72, 50], [80, 70, 60, 65]], ["a", "b", "c"],
                         ["cifar10", "flowers", "pets", "chest"])
    assert [r["model"] for r in payload["ranking"]] == [s.model for s in ref.scores]
    assert [r["xscore"] for r in payload["ranking"]] == pytest.approx([s.xscore for s in ref.scores])
    assert payload["kendalls_w"] == pytest.approx(ref.kendalls_w)
    assert payload["imagenet_top1"] == {"a": 75.0, "c": 70.5}
    few = payload["few_dataset_estimate"]
    assert few["k"] == 4 and len(few["per_k"]) == 4 and few["best_rho"] == pytest.approx(1.0)
    for name in ("accuracy_heatmap.png", "ranks.png", "xscore_vs_imagenet.png", "few_datasets.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert "Few-dataset estimate" in (out / "xscore.txt").read_text()
    md = (out / "xscore.md").read_text().splitlines()
    assert md[0] == "| # | model | cifar10 | flowers | pets | chest | mean | worst | stability | xScore |"
    top = ref.scores[0]
    assert md[2].startswith(f"| 1 | `{top.model}` | ") and md[2].endswith(f"| {top.xscore:.3f} |")
    with (out / "table.csv").open() as f:
        assert next(csv.reader(f)) == ["model", "cifar10", "flowers", "pets", "chest"]


def test_imagenet_top1_from_manifest_and_overrides() -> None:
    # manifest in1k (not the distilled 73.5), the ULSAM paper's row, nothing for a model with no figure
    assert cli.imagenet_top1(["emov2_1m", "mobilenetv2_ulsam", "unknown_net"], {}) == {
        "emov2_1m": 72.3, "mobilenetv2_ulsam": 71.52}
    assert cli.imagenet_top1(["emov2_1m"], {"emov2_1m": 1.0}) == {"emov2_1m": 1.0}
    with pytest.raises(ConfigError, match="NAME=TOP1"):
        cli.main(["--table", "x.csv", "--imagenet-top1", "emov2_1m"])


def test_finished_cells_are_not_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    d1, d2 = _image_folder(tmp_path / "d1", 1, 1), _image_folder(tmp_path / "d2", 1, 1)
    out = tmp_path / "out"
    args = ["--models", "emov2_1m", "--datasets", str(d1), str(d2), "--epochs", "1", "--img-size", "32",
            "--out", str(out), "--no-plots"]
    # pre-seed: the (emov2_1m, d1) cell finished in an earlier run of the same recipe
    out.mkdir()
    recipe = cli.Recipe(epochs=1, img_size="32", batch_size=64, lr=3e-3, seed=0, augment=True, max_train=0)
    (out / "recipe.json").write_text(json.dumps(cli.asdict(recipe)))
    cli.write_results(out / "results.csv", [{"model": "emov2_1m", "dataset": "d1", "accuracy": 0.75,
                                              "img_size": 32, "seconds": 7.0}])
    calls = []

    def fake_cell(model, spec, rec, run_dir, data=None, img_size=None):
        calls.append((model, spec.name, rec, img_size))
        return {"model": model, "dataset": spec.name, "accuracy": 0.5, "best_accuracy": 0.5, "best_epoch": 1,
                "img_size": img_size, "seconds": 3.0, "cpu_seconds": 2.5}

    monkeypatch.setattr(cli, "train_cell", fake_cell)
    assert cli.main(args) == 0
    assert calls == [("emov2_1m", "d2", recipe, 32)]
    assert "[1/1] emov2_1m on d2 (32x32) ..." in capsys.readouterr().out
    assert cli.main(args) == 0 and len(calls) == 1  # everything done: nothing trained
    rows = cli.read_results(out / "results.csv")
    assert [(r["dataset"], float(r["accuracy"])) for r in rows] == [("d1", 0.75), ("d2", 0.5)]
    payload = json.loads((out / "xscore.json").read_text())  # the report carries its recipe
    assert payload["recipe"]["epochs"] == 1 and payload["recipe"]["max_train"] == 0
    assert payload["recipe"]["input_size_per_model"] == {"emov2_1m": 32}
    assert payload["recipe"]["training_seconds_total"] == 10.0
    assert payload["recipe"]["train_subset"] == "all training images"
    # --table recomputes from the runner's results and keeps the recipe saved next to them
    (out / "xscore.json").unlink()
    assert cli.main(["--table", str(out / "results.csv"), "--no-plots"]) == 0
    again = json.loads((out / "xscore.json").read_text())
    assert again["recipe"] == payload["recipe"] and again["ranking"] == payload["ranking"]
    # another budget into the same folder is refused rather than mixed into one table
    with pytest.raises(ConfigError, match="epochs: 1 there, 2 now"):
        cli.main([a if a != "1" else "2" for a in args])


def test_interrupted_cell_stops_the_run_without_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d1 = _image_folder(tmp_path / "d1", 1, 1)
    out = tmp_path / "out"
    monkeypatch.setattr(cli, "train_cell", lambda *a, **k: {"interrupted": True})
    code = cli.main(["--models", "emov2_1m", "--datasets", str(d1), "--epochs", "1", "--img-size", "32",
                     "--out", str(out), "--no-plots"])
    assert code == 130 and cli.read_results(out / "results.csv") == [] and not (out / "xscore.json").exists()


def test_real_cell_trains_and_resumes_from_engine_state(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "shades")
    spec = cli.DatasetSpec("shades", str(root))
    recipe = cli.Recipe(epochs=1, img_size="32", batch_size=4, lr=3e-3, seed=0, augment=False)
    run_dir = tmp_path / "cell"
    row = cli.train_cell("test_efficientnet", spec, recipe, run_dir)
    assert row["model"] == "test_efficientnet" and row["dataset"] == "shades"
    assert 0.0 <= row["accuracy"] <= 1.0 and row["best_epoch"] == 1 and row["params"] > 0
    assert row["img_size"] == 32 and row["cpu_seconds"] >= 0
    assert (run_dir / "train_state.pt").is_file() and (run_dir / "last.safetensors").is_file()
    # the state of a finished cell resumes to the same result without another epoch
    again = cli.train_cell("test_efficientnet", spec, recipe, run_dir)
    assert again["accuracy"] == row["accuracy"]


def test_embedded_bundle_and_argument_errors(tmp_path: Path) -> None:
    recipe = cli.Recipe(epochs=1, img_size="32", batch_size=8, lr=1e-3, seed=0, augment=True)
    bundle = cli._bundle(cli.DatasetSpec("lfw_faces"), recipe)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (160, 40, 2)
    assert bundle.mean == bundle.train.mean and bundle.train.augment and not bundle.val.augment
    assert cli._bundle(cli.DatasetSpec("x", str(tmp_path)), recipe) is None  # folders: the engine's loader
    # the cap cuts training splits only, stratified (50 faces + 50 backgrounds), at the model's own size
    capped = cli.Recipe(epochs=1, img_size="auto", batch_size=8, lr=1e-3, seed=0, augment=False, max_train=100)
    bundle = cli._bundle(cli.DatasetSpec("lfw_faces"), capped, 48)
    assert (len(bundle.train), len(bundle.val)) == (100, 40)
    assert bundle.train.targets.bincount().tolist() == [50, 50] and bundle.train[0][0].shape == (3, 48, 48)
    folder = _image_folder(tmp_path / "shades", n_train=5, n_val=2)
    fb = cli._bundle(cli.DatasetSpec("shades", str(folder)), cli.Recipe(1, "32", 8, 1e-3, 0, False, max_train=4))
    assert (len(fb.train), len(fb.val)) == (4, 4)
    assert sorted(fb.train.dataset.targets[i] for i in fb.train.indices) == [0, 0, 1, 1]
    assert "at most 100 training images per dataset" in capped.describe()["train_subset"]
    assert capped.describe()["input_size"].startswith("each model at the smallest of 32, 64")
    with pytest.raises(ConfigError, match="--suite embedded or --datasets"):
        cli.main(["--models", "emov2_1m"])
    with pytest.raises(UnknownModelError, match="emov2_1m"):
        cli.main(["--models", "emov2-1m", "--suite", "embedded"])
    with pytest.raises(DataError, match="has no train or val folder"):
        cli.main(["--models", "emov2_1m", "--datasets", str(tmp_path)])
    with pytest.raises(DataError, match="did you mean 'textures'"):
        cli.main(["--models", "emov2_1m", "--suite", "embedded", "--only", "texture"])


def test_auto_size_per_model_and_common_size() -> None:
    assert cli.smallest_size("test_efficientnet") == 32
    assert cli.smallest_size("lwganet_l0") == 96  # LWGANet needs >= 96
    assert cli.Recipe(1, "auto", 8, 1e-3, 0, False).size_for("lwganet_l0") == 96
    assert cli.Recipe(1, "64", 8, 1e-3, 0, False).size_for("lwganet_l0") == 64  # a fixed size is not probed
    assert cli.smallest_common_size(["test_efficientnet", "lwganet_l0"]) == 96
    assert cli.Recipe(3, "32", 8, 1e-3, 0, False).overrides(32)["train.val_every"] == 3  # validate once, at the end


def test_plots_are_skipped_with_a_message_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.csv"
    table.write_text("model,dataset,accuracy\na,x,0.5\nb,x,0.7\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert cli.main(["--table", str(table)]) == 0
    assert "plots skipped: matplotlib is not installed" in capsys.readouterr().err
    assert (tmp_path / "xscore.json").is_file() and not (tmp_path / "ranks.png").exists()


def test_dispatcher_reaches_the_runner(tmp_path: Path) -> None:
    from zoo.cli import main

    table = tmp_path / "t.csv"
    table.write_text("model,dataset,accuracy\na,x,0.5\nb,x,0.7\n")
    assert main(["xscore", "--table", str(table), "--no-plots"]) == 0
    assert json.loads((tmp_path / "xscore.json").read_text())["ranking"][0]["model"] == "b"
