"""``zoo benchmark`` on a digits checkpoint: every output written, one row per format, a missing runtime is a row
with its reason (never a crash), and the fp32 ONNX row reproduces PyTorch's metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from zoo.export import benchmark
from zoo.export.probe import make_informative

import zoo
from zoo.cli import main as zoo_main
from zoo.config import load_config

SIZE = 16


def _digits_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = zoo.create_model("test_efficientnet", num_classes=10)
    make_informative(model, (3, SIZE, SIZE))
    cfg = load_config({"task": "classification", "model": {"name": "test_efficientnet"},
                       "data": {"dataset": "digits", "img_size": SIZE}})
    from zoo.data.digits import DIGITS_MEAN, DIGITS_STD

    meta = {"model": "test_efficientnet", "task": "classification", "num_classes": 10, "in_chans": 3,
            "input_size": [3, SIZE, SIZE], "mean": list(DIGITS_MEAN * 3), "std": list(DIGITS_STD * 3),
            "dataset": "digits", "config": cfg.to_dict()}
    return zoo.save_checkpoint(model, folder / "tiny.safetensors", meta)


def test_benchmark_writes_every_output_and_survives_a_missing_runtime(tmp_path, monkeypatch, capsys) -> None:
    # a runtime that is certainly missing, whatever this machine has installed
    monkeypatch.setitem(benchmark.REQUIREMENTS, "tflite", (("zoo_no_such_runtime",), "tflite"))
    ckpt = _digits_checkpoint(tmp_path)
    out = tmp_path / "bench"
    rc = zoo_main(["benchmark", str(ckpt), "--formats", "onnx,int8.onnx,tflite", "--rounds", "2", "--limit", "60",
                   "--out", str(out)])
    assert rc == 0
    for name in ("benchmark.csv", "benchmark.json", "benchmark.png"):
        assert (out / name).stat().st_size > 0
    doc = json.loads((out / "benchmark.json").read_text())
    rows = {r["format"]: r for r in doc["rows"]}
    assert list(rows) == ["pytorch", "onnx", "int8.onnx", "tflite"]
    assert rows["tflite"]["status"] == "failed" and "zoo_no_such_runtime not installed" in rows["tflite"]["reason"]
    assert rows["onnx"]["status"] == rows["int8.onnx"]["status"] == "ok"
    assert rows["onnx"]["value"] == rows["pytorch"]["value"] and rows["onnx"]["change_points"] == 0.0
    assert rows["int8.onnx"]["size_bytes"] < rows["onnx"]["size_bytes"]
    assert all(rows[f]["latency_ms"] > 0 for f in ("pytorch", "onnx", "int8.onnx"))
    assert rows["onnx"]["metrics"]["num_images"] == 60 and doc["dataset"] == "digits"
    assert "int8_flags" in doc["cpu"]
    with open(out / "benchmark.csv") as f:
        assert [r["format"] for r in csv.DictReader(f)] == ["pytorch", "onnx", "int8.onnx", "tflite"]
    table = capsys.readouterr().out
    assert "tflite" in table and "not installed" in table


def test_a_format_whose_export_fails_is_a_row_with_its_reason(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded\nsecond line never shown")

    monkeypatch.setattr(benchmark, "_export", broken)
    ckpt = _digits_checkpoint(tmp_path)
    res = benchmark.run_benchmark(ckpt, tmp_path / "b", formats=["onnx"], rounds=1, limit=10, log=lambda _m: None)
    row = res.rows[1]
    assert row.status == "failed" and row.reason == "RuntimeError: exporter exploded"
    assert (tmp_path / "b" / "benchmark.json").is_file()


def test_unknown_format_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(zoo.errors.ZooError, match="unknown format"):
        benchmark.run_benchmark(tmp_path / "x.safetensors", tmp_path, formats=["onnx", "coreml"])
