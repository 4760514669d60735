"""``zoo xscore``: the paper's table, the peer set, recipes per dataset size, resumable cells and sharded runs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zoo.train.xscore.cli as cli

from zoo.errors import ConfigError, DataError, UnknownModelError

PNG = b"\x89PNG\r\n\x1a\n"
PAPER_TABLE = Path(__file__).parent / "data" / "xscore_paper_accuracy.csv"


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


def test_table_mode_on_the_papers_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert cli.main(["--table", str(PAPER_TABLE), "--out", str(out), "--imagenet-top1", "EfficientNet=77.0"]) == 0
    printed = capsys.readouterr().out
    assert "EfficientNet" in printed.splitlines()[2] and "0.962" in printed.splitlines()[2]
    assert "CIFAR10, HAM10k, Dogs, Indoor67, R² = 0.990" in printed
    assert "lowest cell: TinyNet on Dogs: 29.59" in printed
    payload = json.loads((out / "xscore.json").read_text())
    assert [r["model"] for r in payload["ranking"]][:3] == ["EfficientNet", "ConvMixer", "MobileViT"]
    assert payload["lambda"] == 0.5 and payload["model_costs"] == {}  # the paper's names are not models here
    est = payload["subset_estimate"]
    assert est["datasets"] == ["CIFAR10", "HAM10k", "Dogs", "Indoor67"] and round(est["r2"], 3) == 0.990
    assert len(est["curve"]) == 7 and est["moved"][0] == {"model": "ConvMixer", "full_position": 2,
                                                          "estimated_position": 3}
    for name in ("accuracy_heatmap.png", "ranks.png", "xscore_vs_imagenet.png", "few_datasets.png"):
        assert (out / name).read_bytes()[:8] == PNG
    md = (out / "xscore.md").read_text().splitlines()
    assert md[0].endswith("| mean | worst | G | V | xScore |")
    assert md[2].startswith("| 1 | `EfficientNet` | ") and md[2].endswith("| 0.962 |")
    with (out / "table.csv").open() as f:
        assert next(csv.reader(f))[:3] == ["model", "Imagenette", "CIFAR10"]
    # λ is an option
    assert cli.main(["--table", str(PAPER_TABLE), "--out", str(out), "--lam", "0", "--no-plots", "--k", "2"]) == 0
    payload = json.loads((out / "xscore.json").read_text())
    assert payload["lambda"] == 0.0 and payload["subset_estimate"]["k"] == 2
    top = payload["ranking"][0]
    assert top["xscore"] == pytest.approx(top["generalisation"])


def test_paper_peers_expand_and_are_about_two_and_a_half_million_parameters() -> None:
    from timm.utils import reparameterize_model

    import zoo
    from zoo.bench import count_params

    assert list(cli.PAPER_PEERS) == ["peer_convmixer", "peer_efficientnet", "peer_mobilenet", "peer_shufflenet",
                                     "peer_ghostnet", "peer_tinynet", "peer_mobileone", "peer_fbnet", "peer_convnext",
                                     "peer_mobilevit", "peer_starnet"]
    assert cli.expand_models(["emov2_1m", "paper-peers", "peer_starnet"]) == ["emov2_1m", *cli.PAPER_PEERS]
    # some counted exactly (100 classes; the rest are listed in the module)
    assert count_params(zoo.create_model("peer_ghostnet", num_classes=100)) == 2_578_006
    assert count_params(zoo.create_model("peer_efficientnet", num_classes=100)) == 2_467_540
    assert count_params(zoo.create_model("peer_shufflenet", num_classes=100)) == 2_581_124  # torchvision's class
    mobileone = zoo.create_model("peer_mobileone", num_classes=100)
    assert count_params(mobileone) == 2_671_332
    assert count_params(reparameterize_model(mobileone.eval())) == 2_621_412  # near 2.5 M deployed too
    with pytest.raises(ConfigError, match="no pretrained weights"):
        zoo.create_model("peer_ghostnet", pretrained=True)


def test_import_zoo_registers_the_peers_with_timm_but_not_as_zoo_models() -> None:
    import subprocess
    import sys

    code = ("import timm, zoo; from zoo.registry import timm_registered_models; "
            "assert timm.is_model('peer_shufflenet') and timm.is_model('peer_mobileone'); "
            "assert not any(n.startswith('peer_') for n in zoo.list_models() + timm_registered_models()); "
            "import sys; assert 'zoo.train' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shufflenet_peer_speaks_timms_model_interface() -> None:
    import torch

    import zoo

    m = zoo.create_model("peer_shufflenet", num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert m(x).shape == (2, 3) and m.forward_features(x).shape == (2, 1024, 1, 1)
    assert m.get_classifier().out_features == 3 and m.pretrained_cfg["input_size"][0] == 1
    m.reset_classifier(0)
    assert m(x).shape == (2, 1024)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        zoo.create_model("peer_shufflenet", pretrained=True)


def test_recipe_tiers_follow_the_training_set_size() -> None:
    r = cli.Recipe()
    plans = {n: r.plan(n) for n in (160, 576, 1438, 4000, 50000)}  # the embedded sets and a CIFAR-sized one
    assert [(p.tier, p.epochs, p.batch_size) for p in plans.values()] == [
        ("tiny", 40, 16), ("small", 12, 16), ("medium", 15, 32), ("large", 6, 32), ("full", 30, 64)]
    assert [p.steps(n) for n, p in plans.items()][:4] == [400, 432, 675, 750]  # several hundred steps each
    assert [p.lr for p in plans.values()] == [1e-2, 5e-3, 1e-2, 1e-2, 2e-3]
    fixed = cli.Recipe(epochs=2, batch_size=8, lr=1e-3).plan(160)
    assert (fixed.tier, fixed.epochs, fixed.batch_size, fixed.lr, fixed.warmup_epochs) == ("tiny", 2, 8, 1e-3, 0)
    assert r.plan(5).batch_size == 5  # never more than the split holds
    o = r.overrides(32, plans[160])
    assert (o["train.epochs"], o["train.val_every"], o["sched.warmup_epochs"], o["optim.lr"]) == (40, 40, 4, 1e-2)


def test_shard_parsing_and_a_disjoint_complete_split() -> None:
    assert cli.parse_shard(None) is None and cli.parse_shard("3/8") == (3, 8)
    assert cli.parse_shard("torchrun", {"RANK": "2", "WORLD_SIZE": "4"}) == (3, 4)
    for bad in ("0/4", "5/4", "x", "1-4"):
        with pytest.raises(ConfigError, match="--shard"):
            cli.parse_shard(bad)
    with pytest.raises(ConfigError, match="under torchrun"):
        cli.parse_shard("torchrun", {})
    grid = [(m, d) for d in ("d2", "d1", "d0") for m in ("b", "a", "c")]
    shares = [cli.shard_cells(grid, (k, 4)) for k in range(1, 5)]
    assert sorted(c for s in shares for c in s) == sorted(grid) and sum(map(len, shares)) == 9  # no overlap
    assert [len(s) for s in shares] == [3, 2, 2, 2]
    assert cli.shard_cells(list(reversed(grid)), (2, 4)) == shares[1]  # the caller's order does not matter


def test_sharded_runs_merge_into_the_same_table_as_an_unsharded_run(tmp_path: Path) -> None:
    d1, d2 = _image_folder(tmp_path / "d1", 2, 2), _image_folder(tmp_path / "d2", 2, 2)
    common = ["--models", "test_efficientnet", "test_resnet", "--datasets", str(d1), str(d2), "--epochs", "1",
              "--img-size", "32", "--no-plots", "--threads", "1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main([*common, "--out", str(whole)]) == 0
    for k in (1, 2, 3):  # what three jobs of an array would run, here one after the other
        assert cli.main([*common, "--shard", f"{k}/3", "--out", str(parts)]) == 0
    assert len(list((parts / "cells").glob("*.json"))) == 4
    assert cli.main(["--table", str(parts), "--no-plots"]) == 0  # merge (the last shard already did)

    def cells(folder: Path) -> dict[tuple[str, str], float]:
        return {(r["model"], r["dataset"]): float(r["accuracy"]) for r in cli.read_results(folder / "results.csv")}

    assert cells(parts) == cells(whole) and len(cells(whole)) == 4
    a, b = (json.loads((f / "xscore.json").read_text()) for f in (whole, parts))
    assert a["ranking"] == b["ranking"] and a["accuracy"] == b["accuracy"]
    assert b["model_costs"]["test_resnet"]["params"] > 0 and b["model_costs"]["test_resnet"]["img_size"] == 32
    assert b["recipe"]["per_dataset"]["d1"] == {"train": 4, "val": 4, "tier": "tiny", "epochs": 1, "steps": 1}


def test_finished_cells_are_not_retrained_and_a_new_recipe_is_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d1, d2 = _image_folder(tmp_path / "d1", 1, 1), _image_folder(tmp_path / "d2", 1, 1)
    out = tmp_path / "out"
    args = ["--models", "emov2_1m", "--datasets", str(d1), str(d2), "--epochs", "1", "--img-size", "32",
            "--out", str(out), "--no-plots"]
    out.mkdir()
    recipe = cli.Recipe(img_size="32", epochs=1)
    (out / "recipe.json").write_text(json.dumps(recipe.to_json()))
    cli.write_cell(out, {"model": "emov2_1m", "dataset": "d1", "accuracy": 0.75, "img_size": 32, "seconds": 7.0})
    calls = []

    def fake_cell(model, spec, rec, run_dir, data=None, img_size=None):
        calls.append((model, spec.name, rec, img_size))
        return {"model": model, "dataset": spec.name, "accuracy": 0.5, "img_size": img_size, "seconds": 3.0}

    monkeypatch.setattr(cli, "train_cell", fake_cell)
    assert cli.main(args) == 0
    assert calls == [("emov2_1m", "d2", recipe, 32)]
    assert cli.main(args) == 0 and len(calls) == 1  # everything done: nothing trained
    rows = cli.read_results(out / "results.csv")
    assert [(r["dataset"], float(r["accuracy"])) for r in rows] == [("d1", 0.75), ("d2", 0.5)]
    payload = json.loads((out / "xscore.json").read_text())  # the report carries its recipe
    assert payload["recipe"]["epochs"] == 1 and payload["recipe"]["training_seconds_total"] == 10.0
    with pytest.raises(ConfigError, match="epochs: 1 there, 2 now"):
        cli.main([a if a != "1" else "2" for a in args])


def test_interrupted_cell_stops_the_run_without_a_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d1 = _image_folder(tmp_path / "d1", 1, 1)
    out = tmp_path / "out"
    monkeypatch.setattr(cli, "train_cell", lambda *a, **k: {"interrupted": True})
    code = cli.main(["--models", "emov2_1m", "--datasets", str(d1), "--epochs", "1", "--img-size", "32",
                     "--out", str(out), "--no-plots"])
    assert code == 130 and cli.read_cells(out) == [] and not (out / "xscore.json").exists()


def test_embedded_bundle_and_argument_errors(tmp_path: Path) -> None:
    recipe = cli.Recipe(img_size="32", augment=True)
    bundle = cli._bundle(cli.DatasetSpec("lfw_faces"), recipe, 32)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (160, 40, 2)
    assert bundle.train.augment and not bundle.val.augment
    capped = cli._bundle(cli.DatasetSpec("lfw_faces"), cli.Recipe(max_train=100, augment=False), 48)
    assert (len(capped.train), len(capped.val)) == (100, 40) and capped.train[0][0].shape == (3, 48, 48)
    assert capped.train.targets.bincount().tolist() == [50, 50]
    with pytest.raises(ConfigError, match="--suite embedded or --datasets"):
        cli.main(["--models", "emov2_1m"])
    with pytest.raises(UnknownModelError, match="emov2_1m"):
        cli.main(["--models", "emov2-1m", "--suite", "embedded"])
    with pytest.raises(DataError, match="has no train or val folder"):
        cli.main(["--models", "emov2_1m", "--datasets", str(tmp_path)])
    with pytest.raises(DataError, match="did you mean 'textures'"):
        cli.main(["--models", "emov2_1m", "--suite", "embedded", "--only", "texture"])
    with pytest.raises(ConfigError, match="--lam"):
        cli.main(["--table", str(PAPER_TABLE), "--lam", "-1"])
    with pytest.raises(DataError, match="no finished cells"):
        cli.main(["--table", str(tmp_path)])


def test_auto_size_per_model_and_common_size() -> None:
    assert cli.smallest_size("test_efficientnet") == 32
    assert cli.smallest_size("lwganet_l0") == 96  # LWGANet needs >= 96
    assert cli.Recipe().size_for("lwganet_l0") == 96
    assert cli.Recipe(img_size="64").size_for("lwganet_l0") == 64  # a fixed size is not probed
    assert cli.smallest_common_size(["test_efficientnet", "lwganet_l0"]) == 96


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
