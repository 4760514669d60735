"""``zoo eval`` on exported files: each format scores the checkpoint's validation split like the checkpoint does, and
int8 calibration draws from the checkpoint's own training images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo.export as export
from zoo.export.evaluate import evaluate_exported, training_calibration
from zoo.export.probe import make_informative
from zoo.train.engine import evaluate_checkpoint

import zoo
from zoo.cli import main as zoo_main
from zoo.config import load_config
from zoo.errors import ConfigError

SIZE = 16


def digits_checkpoint(folder: Path) -> Path:
    """An untrained tiny classifier with informative logits, saved as if ``zoo train`` had trained it on digits."""
    torch.manual_seed(0)
    model = zoo.create_model("test_efficientnet", num_classes=10)
    make_informative(model, (3, SIZE, SIZE))
    cfg = load_config({"task": "classification", "model": {"name": "test_efficientnet"},
                       "data": {"dataset": "digits", "img_size": SIZE, "val_batch_size": 128}})
    from zoo.data.digits import DIGITS_MEAN, DIGITS_STD

    meta = {"model": "test_efficientnet", "task": "classification", "num_classes": 10, "in_chans": 3,
            "input_size": [3, SIZE, SIZE], "mean": list(DIGITS_MEAN * 3), "std": list(DIGITS_STD * 3),
            "class_names": [str(i) for i in range(10)], "dataset": "digits", "config": cfg.to_dict()}
    return zoo.save_checkpoint(model, folder / "tiny.safetensors", meta)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, export.ExportResult, dict]:
    tmp = tmp_path_factory.mktemp("evalfmt")
    ckpt = digits_checkpoint(tmp)
    res = export.export_model(str(ckpt), tmp / "out", format="ort", int8=True, latency_rounds=0, n_random=1,
                              exporter="legacy", calib_limit=16, log=lambda _m: None)
    return ckpt, res, evaluate_checkpoint(ckpt)


@pytest.mark.parametrize("suffix,top1_tol,loss_tol", [(".onnx", 0.0, 1e-5), (".ort", 0.0, 1e-5),
                                                      (".int8.onnx", 0.03, 0.1), (".int8.ort", 0.03, 0.1)])
def test_exported_file_reproduces_the_checkpoint_metric(exported, suffix: str, top1_tol: float,
                                                        loss_tol: float) -> None:
    ckpt, res, ref = exported
    path = next(p for p in res.files if p.name.endswith(suffix) and not p.name.endswith(".int8" + suffix))
    got = evaluate_exported(path)
    assert got["runtime"] == "onnxruntime"
    assert got["num_images"] == ref["num_images"] == 359  # the whole digits validation split
    assert abs(got["top1"] - ref["top1"]) <= top1_tol
    assert abs(got["loss"] - ref["loss"]) <= loss_tol * ref["loss"]  # int8: within 10% of the cross-entropy
    assert 0.0 < ref["top1"] < 1.0


def test_zoo_eval_on_an_exported_file_goes_to_its_runtime(exported, capsys) -> None:
    _, res, ref = exported
    assert zoo_main(["eval", str(res.files[0]), "--json", "--limit", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime"] == "onnxruntime" and out["num_images"] == 50


def test_a_file_exported_without_a_dataset_asks_for_one(exported, tmp_path) -> None:
    _, res, _ = exported
    onnx = shutil.copy(res.files[0], tmp_path / "m.onnx")
    side = json.loads(Path(str(res.files[0]) + ".json").read_text())
    side["training_config"] = None
    Path(str(onnx) + ".json").write_text(json.dumps(side))
    with pytest.raises(ConfigError, match="--data"):
        evaluate_exported(onnx)
    got = evaluate_exported(onnx, ["data.dataset=digits", f"data.img_size={SIZE}"], limit=20)
    assert got["num_images"] == 20


def test_int8_calibration_uses_the_checkpoints_training_images(exported) -> None:
    ckpt, res, _ = exported
    assert "digits train split" in res.quant.calibration and res.quant.calibration_samples == 16
    meta = zoo.read_metadata(ckpt)
    (batch,), desc = training_calibration(meta, (3, SIZE, SIZE), limit=8, seed=0)
    (again,), _ = training_calibration(meta, (3, SIZE, SIZE), limit=8, seed=0)
    np.testing.assert_array_equal(batch, again)  # a fixed, seeded subset
    from zoo.data.digits import DigitsDataset

    train = DigitsDataset("train", img_size=SIZE, in_chans=3, augment=False, mean=tuple(meta["mean"]),
                          std=tuple(meta["std"]))
    picks = np.sort(np.random.default_rng(0).choice(len(train), size=8, replace=False))
    np.testing.assert_allclose(batch, np.stack([train[int(i)][0].numpy() for i in picks]))
    assert "8 images of the digits train split" in desc


def test_a_checkpoint_without_a_dataset_calibrates_on_synthetic_and_says_so() -> None:
    assert training_calibration({"model": "test_efficientnet"}, (3, SIZE, SIZE)) is None


@pytest.mark.parametrize("fmt", ["pte", "tflite"])
def test_runtime_formats_reproduce_the_checkpoint_metric(exported, tmp_path, fmt: str) -> None:
    pytest.importorskip("executorch" if fmt == "pte" else "ai_edge_litert")
    ckpt, _, ref = exported
    res = export.export_model(str(ckpt), tmp_path, format=fmt, n_random=1, log=lambda _m: None)
    got = evaluate_exported(res.files[0], threads=1)
    assert got["top1"] == ref["top1"]
    assert abs(got["loss"] - ref["loss"]) <= 1e-4
