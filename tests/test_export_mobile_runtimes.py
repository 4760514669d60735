"""``zoo export --format pte|tflite``: ExecuTorch (XNNPACK) and LiteRT files checked in their own runtimes.

The runtime tests skip when the optional extra is not installed; the missing-extra tests always run.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from zoo.export import export_model
from zoo.export.cli import main as export_main
from zoo.export.metadata import sidecar_path
from zoo.export.probe import make_informative

import zoo
from zoo.errors import ExportError

SIZE = 32


@pytest.fixture(scope="module")
def tiny_model():
    """mobilenetv2_ulsam at 32x32 with informative weights (untrained logits are too small to test parity)."""
    torch.manual_seed(0)
    model = zoo.create_model("mobilenetv2_ulsam", num_classes=10).eval()
    return make_informative(model, (3, SIZE, SIZE))


@pytest.mark.parametrize(("fmt", "module", "extra"), [("pte", "executorch", "executorch"),
                                                      ("tflite", "litert_torch", "tflite")])
def test_missing_extra_is_named_before_the_model_is_built(monkeypatch, tmp_path, fmt, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import of it now raises ImportError
    with pytest.raises(ExportError) as e:
        export_model("no_such_model_name", tmp_path, format=fmt)  # an unknown model would fail later
    msg = str(e.value)
    assert f"--format {fmt} needs the optional '{extra}' extra" in msg
    assert f"pip install 'lightzoo[{extra}]'" in msg
    with pytest.raises(ExportError, match=rf"lightzoo\[{extra}\]"):
        export_main(["mobilenetv2_ulsam", "--format", fmt, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def _check_export(model, tmp_path, fmt: str, versions_key: str):
    result = export_model(model, tmp_path, format=fmt, name="m", input_size=SIZE, n_random=2)
    path = tmp_path / f"m.{fmt}"
    assert result.files == [path] and result.onnx is None
    assert not (tmp_path / "m.onnx").exists()
    (report,) = result.parity
    assert report.passed
    assert report.agreement == 1.0 and report.sets[0].total == 2
    assert 0.0 < report.max_abs_diff <= 1e-4  # a float32 runtime never matches to the bit, and must match to 1e-4
    assert report.sets[0].max_abs_ref["logits"] > 1.0  # informative logits: 1e-4 can tell a wrong graph
    side = json.loads(sidecar_path(path).read_text())
    assert side["format"] == fmt and side["file"] == "m." + fmt
    assert side["input_size"] == [3, SIZE, SIZE] and side["outputs"][0]["shape"] == [1, 10]
    assert side["parity"]["max_abs_diff"] == pytest.approx(report.max_abs_diff)
    assert side["parity"]["top1_agreement"] == 1.0
    assert versions_key in side["runtime_versions"]
    assert "opset" not in side  # no ONNX on this path
    return path, result


def _perturbed(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_classifier().bias.add_(0.5)
    return other


def test_pte_export_parity_in_executorch(tiny_model, tmp_path):
    pytest.importorskip("executorch.runtime")
    from zoo.export.executorch import check_parity_pte
    from zoo.export.spec import build_spec

    path, result = _check_export(tiny_model, tmp_path, "pte", "executorch")
    assert "fp32 .pte (ExecuTorch XNNPACK)" in result.summary()
    # the check would catch a wrong file: the same .pte against a model whose logits moved by 0.5
    with pytest.raises(ExportError, match=r"does not match PyTorch(.|\n)*max abs diff logits 5\.00e-01"):
        check_parity_pte(_perturbed(tiny_model), path, build_spec("classification", (3, SIZE, SIZE)), n_random=1)


def test_tflite_export_parity_in_litert(tiny_model, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert.interpreter")
    from zoo.export.spec import build_spec
    from zoo.export.tflite import check_parity_tflite

    path, result = _check_export(tiny_model, tmp_path, "tflite", "litert-torch")
    assert "fp32 .tflite (LiteRT)" in result.summary()
    with pytest.raises(ExportError, match=r"does not match PyTorch(.|\n)*max abs diff logits 5\.00e-01"):
        check_parity_tflite(_perturbed(tiny_model), path, build_spec("classification", (3, SIZE, SIZE)),
                            n_random=1)


def test_pte_and_tflite_capture_under_the_export_switch(tiny_model, tmp_path, monkeypatch):
    """The runtime formats trace the models' graph paths, as ONNX and PT2E do: EMOv2's eager attention builds rank-7
    window views that XNNPACK refuses at load time ("Failed to define tensor ... unsupported_parameter")."""
    from timm.layers import is_exportable
    from zoo.export.executorch import to_pte
    from zoo.export.spec import build_spec

    pytest.importorskip("executorch")
    switch = []

    def capture(*args, **kwargs):
        switch.append(is_exportable())
        raise RuntimeError("stop after capture")

    monkeypatch.setattr(torch.export, "export", capture)
    spec = build_spec("classification", (3, SIZE, SIZE))
    with pytest.raises(ExportError, match="stop after capture"):
        to_pte(tiny_model, tmp_path / "m.pte", spec)
    if _importable("litert_torch"):
        import litert_torch
        from zoo.export.tflite import to_tflite

        monkeypatch.setattr(litert_torch, "convert", capture)
        with pytest.raises(ExportError, match="stop after capture"):
            to_tflite(tiny_model, tmp_path / "m.tflite", spec)
    assert switch and all(switch) and not is_exportable()


def test_pte_of_folded_weight_slices_keeps_each_slice(tmp_path):
    """Weights the graph slices out of one parameter (EMOv2's q and k projections) are folded to constants; each must
    reach the file as its own tensor (ExecuTorch serialises a constant from the start of its storage, so two slices
    of one weight once became the same tensor, and the difference below was zero)."""
    pytest.importorskip("executorch.runtime")
    from zoo.export.executorch import load_pte, to_pte
    from zoo.export.spec import build_spec

    class TwoSlices(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 3 * 4 * 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = x.flatten(1)
            return torch.nn.functional.linear(f, self.w[:4]) - torch.nn.functional.linear(f, self.w[4:])

    torch.manual_seed(0)
    model = TwoSlices().eval()
    path = to_pte(model, tmp_path / "m.pte", build_spec("classification", (3, 4, 4)))
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(load_pte(path)([x.numpy()])[0])
    assert ref.abs().max() > 1.0 and (got - ref).abs().max() <= 1e-4


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_runtime_formats_refuse_int8_and_dynamic_batch(tmp_path):
    pytest.importorskip("executorch.runtime")
    with pytest.raises(ExportError, match="--int8 and --dynamic-batch are for onnx/ort"):
        export_model("mobilenetv2_ulsam", tmp_path, format="pte", int8=True)
    assert not any(tmp_path.iterdir())


class _DepthwiseBlock(torch.nn.Module):
    """conv -> depthwise conv -> residual add -> pointwise conv -> linear: one node of each selectable kind."""

    def __init__(self, width: int = 32, expand: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.dw = torch.nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.pw = torch.nn.Conv2d(width, expand * width, 1)
        self.fc = torch.nn.Linear(expand * width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        y = y + torch.relu(self.dw(y))
        return self.fc(torch.relu(self.pw(y)).mean((2, 3)))


def test_pt2e_int8_pte_round_trip_in_executorch(tmp_path):
    """PT2E with the XNNPACK quantizer -> int8 .pte that runs in ExecuTorch, matches its quantized PyTorch graph,
    keeps the fp32 network's predictions on its calibration images and stores int8 weights (under 0.6x the fp32
    file, which a float graph cannot be)."""
    pytest.importorskip("executorch")
    import numpy as np
    from zoo.export.executorch import to_pte
    from zoo.export.pt2e import to_pte_int8
    from zoo.export.spec import build_spec

    torch.manual_seed(0)
    model = _DepthwiseBlock(width=64, expand=4).eval()
    spec = build_spec("classification", (3, 16, 16))
    calib = (np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32),)
    report = to_pte_int8(model, tmp_path / "m.int8.pte", spec, calib, calibration_source="test")
    assert report.vs_quantized_torch.passed and report.top1_agreement_with_fp32 >= 0.75
    assert report.vs_quantized_torch.sets[-1].source == "images"
    fp32 = to_pte(model, tmp_path / "m.pte", spec)
    assert report.path.stat().st_size < 0.6 * fp32.stat().st_size


def test_pt2e_int8_pte_of_emov2_runs_in_executorch(tmp_path):
    """EMOv2 folds each BatchNorm into its conv inside the exported graph; PT2E capture folds such weight-only
    subgraphs to constants, so every conv reaches XNNPACK with a constant int8 weight and the file loads and
    matches its quantized PyTorch graph (without the folding the lowering fails on per-channel quantize nodes)."""
    pytest.importorskip("executorch")
    import numpy as np
    from zoo.export.pt2e import to_pte_int8
    from zoo.export.spec import build_spec

    import zoo

    torch.manual_seed(0)
    model = zoo.create_model("emov2_1m", num_classes=5).eval()
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)  # timm zero-initialises the head: no logits
    spec = build_spec("classification", (3, 32, 32), False, model)
    calib = (np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32),)
    report = to_pte_int8(model, tmp_path / "emo.int8.pte", spec, calib, calibration_source="test")
    assert report.vs_quantized_torch.passed and (tmp_path / "emo.int8.pte").exists()
    assert report.top1_agreement_with_fp32 >= 0.5


def test_pt2e_int8_pte_with_a_zero_pad_between_quantized_ops_loads(tmp_path):
    """A zero pad between two quantized convolutions (LWGANet's row shear: pad, then reshape and slice) shares its
    input's int8 scale, so XNNPACK takes it in its int8 partition and the file loads; unannotated, the runtime
    refused it ("Failed to create StaticConstantPad node ... xnn_status_invalid_parameter")."""
    pytest.importorskip("executorch")
    import numpy as np
    from zoo.export.pt2e import quantize_pt2e, to_pte_int8
    from zoo.export.spec import build_spec

    class Shear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.a(x))
            B, C, H, W = y.shape
            y = torch.nn.functional.pad(y, (0, H)).reshape(B, C, H * (W + H))[..., : H * (W + H - 1)]
            y = self.b(y.reshape(B, C, H, W + H - 1))
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    model = Shear().eval()
    spec = build_spec("classification", (3, 8, 8))
    calib = (np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32),)
    quantized = quantize_pt2e(model, spec, calib)
    pads = [n for n in quantized.graph.nodes if n.target == torch.ops.aten.pad.default]
    assert pads and all(n.args[0].target == torch.ops.quantized_decomposed.dequantize_per_tensor.default
                        and next(iter(n.users)).target == torch.ops.quantized_decomposed.quantize_per_tensor.default
                        for n in pads)
    report = to_pte_int8(model, tmp_path / "shear.int8.pte", spec, calib, calibration_source="test")
    assert report.vs_quantized_torch.passed and report.top1_agreement_with_fp32 >= 0.75


def _weight_is_dequantized(graph: torch.fx.GraphModule, groups: int) -> bool:
    conv = next(n for n in graph.graph.nodes if n.target == torch.ops.aten.conv2d.default
                and (n.args[6] if len(n.args) > 6 else 1) == groups)
    return conv.args[1].target == torch.ops.quantized_decomposed.dequantize_per_channel.default


def test_pt2e_int8_keeps_the_named_operator_kinds_in_float(tmp_path):
    """``float_kinds={"depthwise"}`` leaves the depthwise convolution float (its weight is no dequantized int8
    tensor) while the dense convolutions stay int8; the file still matches its quantized graph in ExecuTorch and
    its report says what stayed float."""
    pytest.importorskip("executorch")
    import numpy as np
    from zoo.export.pt2e import quantize_pt2e, to_pte_int8
    from zoo.export.spec import build_spec

    torch.manual_seed(0)
    model = _DepthwiseBlock().eval()
    spec = build_spec("classification", (3, 8, 8))
    calib = (np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32),)
    everything = quantize_pt2e(model, spec, calib)
    assert _weight_is_dequantized(everything, 32) and _weight_is_dequantized(everything, 1)
    kept = quantize_pt2e(model, spec, calib, frozenset({"depthwise"}))
    assert not _weight_is_dequantized(kept, 32) and _weight_is_dequantized(kept, 1)
    report = to_pte_int8(model, tmp_path / "m.int8.pte", spec, calib, calibration_source="test",
                         float_kinds={"depthwise"})
    assert report.vs_quantized_torch.passed
    assert report.selection.float_nodes == {"depthwise": 1}
    assert "depthwise convolutions (1)" in report.summary()
    with pytest.raises(ExportError, match="unknown operator kind.*softmax"):
        to_pte_int8(model, tmp_path / "x.int8.pte", spec, calib, float_kinds={"softmax"})


def test_pt2e_int8_auto_times_each_candidate_and_keeps_the_fastest_file(tmp_path):
    """``select="auto"`` builds one file per candidate set of kinds kept in float, times them in ExecuTorch and
    writes the chosen one (no second lowering, no leftovers); the report and the sidecar fields carry every
    candidate's latency."""
    pytest.importorskip("executorch")
    import numpy as np
    from zoo.export.pt2e import to_pte_int8
    from zoo.export.pte_select import CANDIDATES, label
    from zoo.export.spec import build_spec

    torch.manual_seed(0)
    model = _DepthwiseBlock().eval()
    spec = build_spec("classification", (3, 8, 8))
    calib = (np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32),)
    report = to_pte_int8(model, tmp_path / "m.int8.pte", spec, calib, calibration_source="test", select="auto",
                         threads=1)
    sel = report.selection
    assert set(sel.candidate_ms) == {label(k) for k in CANDIDATES}
    assert sel.float_kinds in CANDIDATES and report.vs_quantized_torch.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.pte"]
    assert sel.to_dict()["float_kinds"] == [k for k in ("depthwise", "elementwise") if k in sel.float_kinds]


def test_pte_select_skips_a_candidate_that_fails_and_times_the_rest(tmp_path):
    """A candidate whose lowering fails is left out (logged), the others are still timed and the winner written;
    when every candidate fails, the first error is raised."""
    pytest.importorskip("executorch")
    from zoo.export.pte_select import choose_float_kinds

    def lower(graph, path):
        if graph == "depthwise":
            raise ExportError("lowering refused")
        path.write_bytes(graph.encode())
        return path

    quantize = lambda kinds: "+".join(sorted(kinds)) or "none"  # noqa: E731 - a stand-in graph per candidate
    load = lambda path: (lambda _inputs: None)  # noqa: E731
    best, graph, times = choose_float_kinds(quantize, lower, load, [], {"depthwise", "elementwise"},
                                            tmp_path / "m.pte", rounds=2)
    assert "depthwise" not in times and set(times) == {"none", "depthwise+elementwise"}
    assert (tmp_path / "m.pte").read_bytes().decode() == graph and graph in {"none", "depthwise+elementwise"}
    with pytest.raises(ExportError, match="lowering refused"):
        choose_float_kinds(lambda kinds: "depthwise", lower, load, [], {"depthwise"}, tmp_path / "x.pte", rounds=2)


def test_pte_select_takes_a_candidate_that_keeps_more_float_only_when_clearly_faster():
    pytest.importorskip("executorch")
    from zoo.export.pte_select import fastest

    none, dw, both = frozenset(), frozenset({"depthwise"}), frozenset({"depthwise", "elementwise"})
    assert fastest({none: 10.0, dw: 9.8, both: 9.9}) == none  # within timing noise: int8 stays
    assert fastest({none: 10.0, dw: 9.0, both: 8.9}) == dw  # 2% on 9.0 is noise
    assert fastest({none: 10.0, dw: 9.0, both: 8.0}) == both


class _AttentionBlock(torch.nn.Module):
    """What splits XNNPACK's delegate when spelled as the models spell it under the export switch: erf-GELU,
    a channel LayerNorm, a 4-D attention matmul (which decomposes with identity expands) and a softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y * (torch.erf(y / 2 ** 0.5) + 1.0) * 0.5
        t = self.norm(y.permute(0, 2, 3, 1))  # (B, H, W, C)
        attn = torch.softmax(t @ t.transpose(-1, -2), dim=-1) @ t
        return self.fc(attn.mean((1, 2)))


def test_xnnpack_rewrites_keep_gelu_layer_norm_and_attention_in_the_delegate(tmp_path):
    """After capture and lowering nothing of the block is left to ExecuTorch's portable kernels except the final
    average (a reduction XNNPACK takes only over H and W with keepdim): without the rewrites erf, layer_norm and
    the identity expand_copy each left the delegate. The file still computes what PyTorch does."""
    pytest.importorskip("executorch.runtime")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower
    from zoo.export.executorch import load_pte, to_pte
    from zoo.export.pt2e import capture
    from zoo.export.spec import build_spec
    from zoo.export.xnnpack_passes import decompose_layer_norm, drop_identity_expands

    torch.manual_seed(0)
    model = _AttentionBlock().eval()
    spec = build_spec("classification", (3, 4, 4))
    graph = capture(model, spec)
    targets = {str(n.target) for n in graph.graph.nodes}
    assert "aten.gelu.default" in targets and "aten.erf.default" not in targets
    assert decompose_layer_norm(graph) == 1
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        ref = model(x)
        out = graph(x)
        assert torch.allclose(out[0] if isinstance(out, tuple) else out, ref, atol=1e-5)
        program = torch.export.export(graph, (x,))
    edge = to_edge_transform_and_lower(program, transform_passes=[drop_identity_expands],
                                       partitioner=[XnnpackPartitioner()])
    table = get_delegation_info(edge.exported_program().graph_module).get_operator_delegation_dataframe()
    left_out = {op for op, n in zip(table.iloc[:, 0], table.iloc[:, 2]) if n and op not in ("getitem", "Total")}
    assert left_out <= {"aten_mean_dim", "dim_order_ops__to_dim_order_copy_default"}, left_out
    path = to_pte(model, tmp_path / "block.pte", spec)
    got = torch.from_numpy(load_pte(path)([x.numpy()])[0])
    assert (got - ref).abs().max() <= 1e-4
