"""Export pipeline: exporters and fallback, parity rules, int8, .ort round trip, sidecars, CLI, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
import zoo.export as export
from PIL import Image
from torch import nn
from zoo.export import onnx_export
from zoo.export.calib import load_calibration, preprocess
from zoo.export.parity import agreement, make_session
from zoo.export.pipeline import export_onnx_verified

import zoo
from zoo.data.transforms import data_config_for
from zoo.errors import DataError, ExportError

TINY = "mobilenetv3_small_050"  # timm; 0.57M params, exports in ~1 s with the legacy exporter


@torch.no_grad()
def tiny_model(num_classes: int = 5) -> nn.Module:
    """A timm model whose logits are O(1) (timm's 0.01-std classifier init gives ~1e-3 logits)."""
    torch.manual_seed(0)
    m = timm.create_model(TINY, num_classes=num_classes).eval()
    spread = m(torch.randn(4, 3, 64, 64)).std()
    m.classifier.weight.div_(spread)
    m.classifier.bias.div_(spread)
    return m


def write_images(folder: Path, n: int, size: tuple[int, int] = (80, 72), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).resize(size, Image.Resampling.NEAREST).save(folder / f"img{i}.png")
    return folder


# ----------------------------------------------------------------------------------------------------- exporters
def test_dynamo_exporter_dynamic_batch_graph_and_parity(tmp_path: Path) -> None:
    """The default exporter: named I/O, a symbolic batch axis that really accepts other batch sizes, parity."""
    model = tiny_model()
    ex = export.to_onnx(model, tmp_path / "m.onnx", 64, dynamic_batch=True, optimize=False)
    assert ex.exporter == "dynamo" and ex.fallback_reason is None and ex.opset == 18
    proto = onnx.load(str(ex.path))
    onnx.checker.check_model(proto)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # self-contained
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    report = export.check_parity(model, ex.path, ex.spec, n_random=3)  # batch 3 != exported batch 2
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0 and report.sets[0].samples == 3


def test_legacy_exporter_fixed_batch(tmp_path: Path) -> None:
    model = tiny_model()
    ex = export.to_onnx(model, tmp_path / "m.onnx", (3, 64, 48), exporter="legacy")
    session = make_session(ex.path)
    assert session.get_inputs()[0].shape == [1, 3, 64, 48] and session.get_outputs()[0].shape == [1, 5]
    report = export.check_parity(model, ex.path, ex.spec, n_random=2)  # fed one sample at a time
    assert report.passed and report.sets[0].samples == 2


def test_session_spinning_options_reach_onnxruntime(tmp_path: Path) -> None:
    """The latency benchmark relies on these entries: spinning off, or spinning parked after each run."""
    ex = export.to_onnx(tiny_model(), tmp_path / "m.onnx", (3, 32, 32), exporter="legacy")

    def entries(**kw) -> tuple[str, ...]:
        opts = make_session(ex.path, 2, **kw).get_session_options()
        found = []
        for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
            try:
                found.append(opts.get_session_config_entry(key))
            except RuntimeError:  # onnxruntime raises for an entry that was never set
                found.append("")
        return tuple(found)

    assert entries() == ("", "")  # onnxruntime's defaults
    assert entries(spin=False) == ("0", "")
    assert entries(stop_spinning_after_run=True) == ("", "1")


def test_exporter_exception_falls_back_and_is_recorded(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    ex = export.to_onnx(tiny_model(), tmp_path / "m.onnx", 64)
    assert ex.exporter == "legacy" and ex.requested_exporter == "dynamo"
    assert "simulated dynamo failure" in ex.fallback_reason
    assert "retrying with the legacy exporter" in caplog.text
    with pytest.raises(ExportError, match="simulated dynamo failure"):
        export.to_onnx(tiny_model(), tmp_path / "n.onnx", 64, fallback=False)


class ViewInplace(nn.Module):
    """Writes through a view in place: the TorchScript tracer drops the write, dynamo keeps it (as in EMOv2)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.mean((2, 3)).clone()
        out.view(-1).add_(1.0)
        return self.fc(out)


def test_wrong_graph_from_an_exporter_triggers_fallback_on_parity(tmp_path: Path, caplog) -> None:
    model = ViewInplace().eval()
    with pytest.raises(ExportError, match="does not match PyTorch") as err:
        export_onnx_verified(model, tmp_path / "v.onnx", 8, exporter="legacy", fallback=False, n_random=2)
    # the report names both figures, and the wrong file is moved out of the way
    assert "max abs diff" in str(err.value) and "top-1 agreement" in str(err.value)
    assert not (tmp_path / "v.onnx").exists() and (tmp_path / "v.parity_failed.onnx").exists()
    ex, parity = export_onnx_verified(model, tmp_path / "v.onnx", 8, exporter="legacy", n_random=2, optimize=False)
    assert ex.exporter == "dynamo" and "legacy exporter wrote a graph that does not match" in ex.fallback_reason
    assert parity.passed and "retrying with the dynamo exporter" in caplog.text


def test_unknown_exporter_and_bad_size_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown exporter 'onnxscript'"):
        export.to_onnx(tiny_model(), tmp_path / "m.onnx", 64, exporter="onnxscript")
    with pytest.raises(zoo.InputShapeError, match=r"\(C, D, H, W\)"):
        export.to_onnx(tiny_model(), tmp_path / "m.onnx", (1, 3, 64, 64, 1))
    with pytest.raises(ExportError, match=r"does not run on inputs of size \(1, 3, 64, 64, 1\).*--input-size"):
        export.to_onnx(tiny_model(), tmp_path / "m.onnx", (3, 64, 64, 1))  # a volume for a 2D network


# --------------------------------------------------------------------------------------------------------- parity
def test_agreement_counts_near_ties_as_agreeing() -> None:
    ref = np.array([[0.0, 1.0, 0.99995], [2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    other = np.array([[0.0, 0.99990, 1.0], [0.0, 2.0, -1.0], [0.0, 1.0, 0.5]])
    assert agreement(ref, other, 1, tol=1e-4) == (2, 3)  # row 0 is a tie within tolerance, row 1 a real flip
    assert agreement(ref, other, 1, tol=0.0) == (1, 3)
    # single-channel (binary) outputs compare signs
    assert agreement(np.array([[0.5], [-0.2]]), np.array([[0.1], [0.3]]), 1) == (1, 2)


def test_parity_failure_reports_both_figures(tmp_path: Path) -> None:
    model = tiny_model()
    ex = export.to_onnx(model, tmp_path / "m.onnx", 64, exporter="legacy")
    with torch.no_grad():
        model.classifier.bias[0] += 0.01  # PyTorch now differs from the file by exactly 0.01 on class 0
    report = export.check_parity(model, ex.path, ex.spec, n_random=2, raise_on_fail=False)
    assert not report.passed and report.max_abs_diff == pytest.approx(0.01, abs=1e-5)
    with pytest.raises(ExportError, match=r"max abs diff logits 1\.00e-02.*tolerance 1e-04"):
        export.check_parity(model, ex.path, ex.spec, n_random=2)
    assert export.check_parity(model, ex.path, ex.spec, n_random=2, atol=0.02).passed


# ---------------------------------------------------------------------------------------------------- calibration
def test_preprocess_normalises_like_the_model_expects(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20), (255, 0, 128)).save(tmp_path / "c.png")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    arr = preprocess(tmp_path / "c.png", data_config_for((3, 16, 16), mean, std, crop_pct=0.875))
    assert arr.shape == (3, 16, 16) and arr.dtype == np.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(arr.mean((1, 2)), expected, atol=1e-5)
    four = preprocess(tmp_path / "c.png", data_config_for((4, 8, 8), mean, std))  # RGB + a zero channel (PHC nets)
    assert four.shape == (4, 8, 8) and np.all(four[3] == 0)


def test_change_detection_calibration_needs_a_and_b(tmp_path: Path) -> None:
    write_images(tmp_path / "A", 2)
    with pytest.raises(DataError, match="A/ and B/"):
        load_calibration(tmp_path, data_config_for((3, 16, 16)), n_inputs=2)
    write_images(tmp_path / "B", 3)
    a, b = load_calibration(tmp_path, data_config_for((3, 16, 16)), n_inputs=2)
    assert a.shape == b.shape == (2, 3, 16, 16)  # only names present in both folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_calibration(tmp_path / "empty", data_config_for((3, 16, 16)))


# ---------------------------------------------------------------------------------- checkpoint -> ort + int8 (CLI)
def test_cli_checkpoint_to_ort_with_int8_and_sidecars(tmp_path: Path, capsys) -> None:
    """The whole job from a training checkpoint: .onnx, .int8.onnx, .ort, .int8.ort, operator config, sidecars."""
    from zoo.export.cli import main

    model = tiny_model(num_classes=3)
    ckpt = tmp_path / "run" / "best.safetensors"
    classes = ["cat", "dog", "fox"]
    zoo.save_checkpoint(model, ckpt, {"model": TINY, "task": "classification", "num_classes": 3,
                                      "class_names": classes, "input_size": [3, 64, 64], "mean": [0.5, 0.5, 0.5],
                                      "std": [0.25, 0.25, 0.25]})
    calib = write_images(tmp_path / "calib", 6)
    out = tmp_path / "out"
    rc = main([str(ckpt), "--format", "ort", "--exporter", "legacy", "--int8", "--calib", str(calib),
               "--latency-rounds", "0", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    stem = f"{TINY}_best"
    for f in (f"{stem}.onnx", f"{stem}.int8.onnx", f"{stem}.ort", f"{stem}.int8.ort",
              f"{stem}.required_operators.config"):
        assert (out / f).is_file(), f
    # every model file has its sidecar, and the figures are printed
    assert "top-1 agreement on logits 100.00% (6/6)" in text  # the calibration images were used for parity
    assert "top-1 agreement with fp32 on the calibration set" in text
    meta = json.loads((out / f"{stem}.onnx.json").read_text())
    assert meta["class_names"] == classes and meta["num_classes"] == 3 and meta["opset"] == 18
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and meta["input_size"] == [3, 64, 64]
    assert meta["inputs"] == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["shape"] == [1, 3]
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] <= 1e-4
    assert {s["source"] for s in meta["parity"]["sets"]} == {"random", "images"}
    ort_meta = json.loads((out / f"{stem}.ort.json").read_text())
    assert ort_meta["format"] == "ort" and ort_meta["parity"]["passed"] and ort_meta["parity"]["label"] == "fp32 .ort"
    q = json.loads((out / f"{stem}.int8.onnx.json").read_text())["quantization"]
    assert q["mode"] == "static" and q["calibration_samples"] == 6
    assert q["size_int8_bytes"] < q["size_fp32_bytes"] / 2.5  # int8 weights: ~4x smaller, minus graph overhead
    assert 0.0 <= q["top1_agreement_with_fp32"] <= 1.0
    ops = {n.op_type for n in onnx.load(str(out / f"{stem}.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    config = (out / f"{stem}.required_operators.config").read_text()
    assert "ai.onnx;" in config and "Conv" in config
    # the .ort file runs in onnxruntime and gives PyTorch's answer
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (y,) = make_session(out / f"{stem}.ort").run(None, {"input": x})
    with torch.no_grad():
        np.testing.assert_allclose(y, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_dynamic_int8_and_synthetic_calibration_warning(tmp_path: Path) -> None:
    model = tiny_model()
    with pytest.warns(UserWarning, match="synthetic images"):
        result = export.export_model(model, tmp_path, name="m", input_size=64, exporter="legacy", int8=True,
                                     int8_mode="dynamic", latency_rounds=0, n_random=2)
    assert result.quant is not None and result.quant.mode == "dynamic"
    assert result.quant.size_int8 < result.quant.size_fp32
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.int8.onnx")).graph.node}
    assert "ConvInteger" in ops or "DynamicQuantizeLinear" in ops


def test_cli_errors_are_reported_by_the_dispatcher(tmp_path: Path, capsys) -> None:
    from zoo.cli import main

    assert main(["export", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "mobilenetv3_smal_050", "--out", str(tmp_path)]) == 1
    assert "did you mean" in capsys.readouterr().err


def test_hypercomplex_layers_keep_their_factors_in_fp32_and_quantize_in_int8(tmp_path: Path) -> None:
    # a PH conv builds its weight as kron(A_i, F_i) in every forward: the fp32 graph keeps the factors (1/n of the
    # weights on disk, the MatMul is constant-folded by onnxruntime at load), and int8's pre-processing folds it so
    # the full conv weight is quantized like any other
    from zoo.layers.hypercomplex import PHConv2d

    torch.manual_seed(0)
    model = nn.Sequential(PHConv2d(4, 16, 3, n=4, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    ex, parity = export_onnx_verified(model, tmp_path / "ph.onnx", (4, 8, 8), exporter="legacy", fallback=False,
                                      n_random=2, optimize=False)
    assert parity.passed
    graph = onnx.load(str(ex.path)).graph
    dims = sorted(tuple(i.dims) for i in graph.initializer)
    assert (4, 36) in dims and (16, 4, 3, 3) not in dims  # F (as reshaped for the matmul), not W: 144 vs 576 values
    calib = (np.random.default_rng(0).standard_normal((4, 4, 8, 8)).astype(np.float32),)
    q = export.quantize_int8(ex.path, tmp_path / "ph.int8.onnx", ex.spec, calib, latency_rounds=0)
    assert q.options == {"format": "qdq", "per_channel": True, "reduce_range": False, "exclude_depthwise": False,
                         "select": "all", "selection": None}
    int8_graph = onnx.load(str(q.path)).graph
    assert any(i.data_type == onnx.TensorProto.INT8 and list(i.dims) == [16, 4, 3, 3] for i in int8_graph.initializer)


def test_int8_leaves_nothing_in_the_working_directory_when_symbolic_shapes_fail(tmp_path: Path, monkeypatch) -> None:
    # onnxruntime's symbolic shape inference dumps sym_shape_infer_temp.onnx + a uuid-named copy of the weights into
    # the current directory when it gives up (seen on EMOv2 and LWGANet graphs); quantize_int8 must keep the user's
    # folder clean and still quantize through ONNX's own shape inference
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def give_up(model, *args, **kwargs):
        Path("sym_shape_infer_temp.onnx").write_bytes(b"dump")  # what onnxruntime does, relative to the cwd
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes", staticmethod(give_up))
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    monkeypatch.chdir(user_dir)
    ex, _ = export_onnx_verified(tiny_model(), Path("m.onnx"), (3, 32, 32), exporter="legacy", fallback=False,
                                 n_random=1)
    calib = (np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32),)
    q = export.quantize_int8(ex.path, Path("m.int8.onnx"), ex.spec, calib, latency_rounds=0)
    assert sorted(p.name for p in user_dir.iterdir()) == ["m.int8.onnx", "m.onnx"]
    assert q.path.exists()


def test_export_model_defaults_to_the_models_preferred_exporter(tmp_path: Path, monkeypatch) -> None:
    # LightM-UNet's scans export in seconds with the TorchScript exporter and in minutes with dynamo: without an
    # explicit choice zoo export must pick legacy for it and keep dynamo for everything else
    from zoo.export import pipeline

    seen = []

    def record(model, path, size, **kwargs):
        seen.append(kwargs["exporter"])
        raise ExportError("recorded")

    monkeypatch.setattr(pipeline, "export_onnx_verified", record)
    for name in ("lightm_unet_2d", TINY):
        with pytest.raises(ExportError, match="recorded"):
            pipeline.export_model(name, tmp_path / name, input_size=32)
    with pytest.raises(ExportError, match="recorded"):
        pipeline.export_model("lightm_unet_2d", tmp_path / "explicit", input_size=32, exporter="dynamo")
    assert seen == ["legacy", "dynamo", "dynamo"]


def test_float64_noise_floor_passes_float32_rounding_but_not_a_wrong_graph(tmp_path) -> None:
    """No registered backbone needs the noise floor now (test_export_backbones pins that), so it is pinned here on
    a model built to be float32-noisy: logits ~6e3, where float32 itself is ~3e-3 from float64."""
    from zoo.export.parity import NOISE_FLOOR_FACTOR, check_parity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 64, 8)).eval()
    with torch.no_grad():
        model[0].weight.mul_(300.0), model[2].weight.mul_(30.0)
    ex, parity = export_onnx_verified(model, tmp_path / "noisy.onnx", (3, 8, 8), exporter="legacy", n_random=2,
                                      optimize=False)
    assert parity.passed and parity.noise_floor is not None and parity.noise_floor > 1e-3
    assert 1e-4 < parity.max_abs_diff <= NOISE_FLOOR_FACTOR * parity.noise_floor
    assert "from PyTorch float64" in parity.summary()
    with torch.no_grad():
        model[2].bias[3] += 0.1  # a wrong graph: off by 0.1 on one logit, 10x the raised tolerance
    with pytest.raises(ExportError, match="does not match PyTorch"):
        check_parity(model, ex.path, ex.spec, n_random=2)
