"""Exports asked for something impossible: an ``ExportError`` / ``InputShapeError`` that names the opset, size,
format or model, raised before any slow export work, and ``zoo export`` exit code 1 (argparse: 2) with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from zoo.export import export_model
from zoo.export.onnx_export import to_onnx

import zoo
from zoo.cli import main as zoo_main
from zoo.errors import ExportError, InputShapeError

NAME = "test_efficientnet"


@pytest.fixture(scope="module")
def model():
    return zoo.create_model(NAME, num_classes=3).eval()


@pytest.mark.parametrize("opset", [3, 99])
def test_impossible_opsets(model, tmp_path: Path, opset: int) -> None:
    with pytest.raises(ExportError, match=rf"opset {opset} is impossible here: torch.onnx writes opsets 7\.\.\d+"):
        to_onnx(model, tmp_path / "m.onnx", 32, opset=opset)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_size=(1, 2, 3, 4, 5)), InputShapeError,
         r"input size must be H, \(H, W\), \(C, H, W\) or \(C, D, H, W\) with positive values; got \(1, 2, 3, 4, 5\)"),
        (dict(input_size=(3, 0, 32)), InputShapeError, r"with positive values; got \(3, 0, 32\)"),
        (dict(input_size=32, exporter="tracer"), ExportError,
         r"unknown exporter 'tracer'; choose one of dynamo, legacy"),
    ],
    ids=["rank5-size", "zero-size", "unknown-exporter"],
)
def test_impossible_sizes_and_exporters(model, tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        to_onnx(model, tmp_path / "m.onnx", **kwargs)


def test_a_size_the_model_cannot_take_is_named(tmp_path: Path) -> None:
    lwg = zoo.create_model("lwganet_l0", num_classes=3).eval()
    with pytest.raises(ExportError, match=r"the model does not run on inputs of size \(1, 3, 64, 64\) in PyTorch "
                                          r"\(.*got 64x64.*\); pick another --input-size"):
        to_onnx(lwg, tmp_path / "m.onnx", 64)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"unknown format 'coreml'; choose one of onnx, ort, pte, tflite"):
        export_model(NAME, tmp_path, format="coreml")


@pytest.mark.parametrize(
    "argv, rc, line",
    [
        (["--opset", "99"], 1, "zoo export: error: opset 99 is impossible here: torch.onnx writes opsets 7.."),
        (["--calib-limit", "0"], 1, "zoo export: error: --calib-limit must be at least 1"),
        (["--input-size", "big"], 2, "zoo export: error: argument --input-size: input size 'big': use 224"),
    ],
    ids=["cli-opset", "cli-calib-limit", "cli-input-size"],
)
def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], rc: int,
                                 line: str) -> None:
    try:
        got = zoo_main(["export", NAME, "--out", str(tmp_path), *argv])
    except SystemExit as e:  # argparse's own usage errors
        got = e.code
    err = capsys.readouterr().err
    assert got == rc
    assert line in err and err.rstrip("\n").splitlines()[-1].startswith(line.split(": error")[0]), err


def test_cli_unknown_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert zoo_main(["export", "emov2_1n", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zoo export: error: ") and "'emov2_1n'" in err and "emov2_1m" in err
    assert err.count("\n") == 1, err
