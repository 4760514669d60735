"""``zoo train`` / ``zoo eval`` / ``zoo predict`` end to end on a tiny run: what a user runs right after training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from zoo.train.cli import eval_main, main

from zoo.data.digits import DigitsDataset
from zoo.predict.cli import main as predict_main


def test_train_eval_predict_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    rc = main(["--quiet", "model.name=test_efficientnet", "data.img_size=16", "train.epochs=1", "optim.lr=0.01",
               f"out_dir={run}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {run / 'best.safetensors'}" in out and f"plot:       {run / 'curves.png'}" in out
    best = json.loads((run / "best.json").read_text())

    assert eval_main(["--checkpoint", str(run / "best.safetensors"), "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] == best["metrics"]["top1"] and metrics["num_images"] == 359

    # a user's PNG: a held-out digit saved as an 8x8 grey image (white ink on black, as in the data set)
    from PIL import Image

    val = DigitsDataset("val", img_size=8, in_chans=1, mean=(0.0,), std=(1.0,))
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i in range(3):
        Image.fromarray((val[i][0][0].numpy() * 255).round().astype(np.uint8)).save(img_dir / f"d{i}.png")
    assert predict_main(["--checkpoint", str(run / "best.safetensors"), str(img_dir), "--out",
                         str(tmp_path / "pred"), "--topk", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("d0.png:") == 1 and "results:" in printed
    res = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(res) == 3 and all(len(r["topk"]) == 3 for r in res)
    for r in res:
        probs = [t["prob"] for t in r["topk"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert {t["class"] for r in res for t in r["topk"]} <= set("0123456789")


def test_resume_hint_and_help_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["--quiet", "model.name=test_efficientnet", "data.img_size=16", "train.stop_at_step=1",
               f"out_dir={tmp_path}"])
    assert rc == 0 and f"continue with: zoo train --resume {tmp_path}" in capsys.readouterr().out
    assert main(["--help-config"]) == 0
    assert "optim.lr" in capsys.readouterr().out
