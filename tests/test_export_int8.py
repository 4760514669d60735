"""int8 node selection (``--int8-select auto``): kernel attribution, candidate nodes, the keep-in-float rule, the
re-quantized graph, option errors. No wall-clock assertions: timings are injected where a decision is tested."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import zoo.export as export
from torch import nn
from zoo.export import int8_select
from zoo.export.cli import main as export_main
from zoo.export.int8_select import GraphProfile, NodeTiming, _owner, candidates, choose_excluded
from zoo.export.pipeline import export_onnx_verified

from zoo.errors import ExportError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    """A stem conv, a grouped conv with two outputs per group (LWGANet's downsampling kind, whose onnxruntime int8
    kernel was 20-70x slower than float on AVX2), a pointwise conv, a residual Add, pooling and a classifier."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=8)
            self.pw = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.grouped(torch.relu(self.stem(x)))
            y = y + self.pw(y)
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("int8sel")
    ex, parity = export_onnx_verified(Net().eval(), tmp / "net.onnx", (3, 16, 16), exporter="legacy",
                                      fallback=False, n_random=1)
    assert parity.passed
    calib = (np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32),)
    q = export.quantize_int8(ex.path, tmp / "all.int8.onnx", ex.spec, calib, latency_rounds=0)
    return ex, calib, q


def test_kernels_are_attributed_to_the_node_they_came_from() -> None:
    # onnxruntime renames what it fuses or re-lays out; the longest original name followed by _ / or the end owns it
    pool = sorted(["/a/Conv", "/a/Conv_1", "/b/act/Mul", "/c/Add"], key=len, reverse=True)
    assert _owner("/a/Conv_token_7", pool) == "/a/Conv"  # QDQ fusion -> QLinearConv
    assert _owner("/a/Conv_1_token_3", pool) == "/a/Conv_1"  # not /a/Conv: the longer name wins
    assert _owner("/a/Conv_output_0_nchwc", pool) == "/a/Conv"  # NCHWc conv, named after its output
    assert _owner("fused /c/Add", pool) == "/c/Add"
    assert _owner("/b/act/Mul/QuickGeluFusion/", pool) == "/b/act/Mul"
    assert _owner("/a/Conv2", pool) is None  # a different node that merely starts the same way
    assert _owner("Gelu_token_42", pool) is None


def test_keep_in_float_rule_needs_a_clear_loss() -> None:
    t = [NodeTiming("slow", "Conv", 0.5, 20.0, "QLinearConv"),  # LWGANet's downsample conv: 40x slower
         NodeTiming("fast", "Conv", 2.0, 1.0, "QLinearConv"),
         NodeTiming("tie", "Add", 0.100, 0.105, "QLinearAdd"),  # 5% slower: inside the noise margin, stays int8
         NodeTiming("tiny", "Mul", 0.002, 0.008, "QLinearMul"),  # 4x but 6 us: below the absolute floor
         NodeTiming("softmax", "Softmax", 0.06, 0.23, "QLinearSoftmax")]
    assert choose_excluded(t) == ["slow", "softmax"]
    assert choose_excluded(t, margin=0.0, min_ms=0.0) == ["slow", "tie", "tiny", "softmax"]
    assert t[0].speedup == pytest.approx(0.025)


def test_candidates_are_the_nodes_that_run_in_int8(tiny) -> None:
    ex, calib, q = tiny
    names = candidates(onnx.load(str(q.path)))
    ops = {n.name: n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert sorted(ops[n] for n in names) == ["Add", "Conv", "Conv", "Conv", "Gemm", "ReduceMean"]


def test_profile_attributes_every_int8_node_to_its_kernel(tiny) -> None:
    # a real (short) profiling run: which kernel onnxruntime ran is deterministic, the milliseconds are not
    ex, calib, q = tiny
    prof = int8_select.profile_nodes(ex.path, q.path, {"input": calib[0][:1]}, threads=1, rounds=2, warmup=1)
    kernels = {t.op_type + ":" + t.int8_kernel for t in prof.timings}
    assert {"Conv:QLinearConv", "Gemm:QGemm"} <= kernels
    assert all(t.fp32_ms > 0 and t.int8_ms > 0 for t in prof.timings if t.op_type == "Conv")
    assert prof.fp32_total_ms > 0 and prof.int8_qdq_ms > 0  # the input Q and output DQ at least
    assert "op type | nodes |" in int8_select.summary_table(prof)


def test_auto_selection_requantizes_with_the_slow_nodes_in_float(tiny, tmp_path: Path, monkeypatch) -> None:
    ex, calib, _ = tiny
    grouped = next(n.name for n in onnx.load(str(ex.path)).graph.node
                   if n.op_type == "Conv" and any(a.name == "group" and a.i == 8 for a in n.attribute))
    seen = {}

    def fake_profile(fp32_path, qdq_path, feed, **kw):  # the grouped conv's int8 kernel is 40x slower
        seen["feed"] = {k: v.shape for k, v in feed.items()}
        model = onnx.load(str(qdq_path))
        ops = {n.name: n.op_type for n in model.graph.node}
        t = [NodeTiming(n, ops[n], 0.5, 20.0 if n == grouped else 0.25, "QLinear") for n in candidates(model)]
        return GraphProfile(t, 10.0, 30.0, 1.0, {}, {})

    monkeypatch.setattr(int8_select, "profile_nodes", fake_profile)
    q = export.quantize_int8(ex.path, tmp_path / "auto.int8.onnx", ex.spec, calib, select="auto", latency_rounds=0)
    assert seen["feed"] == {"input": (1, 3, 16, 16)}
    sel = q.options["selection"]
    assert q.options["select"] == "auto"
    assert sel["kept_float_nodes"] == [grouped] and sel["kept_float_by_op"] == {"Conv": 1}
    assert sel["profiled_nodes"] == 6
    graph = onnx.load(str(q.path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    init = {i.name: i for i in graph.initializer}
    # the kept conv reads its float weight directly; the others read it through DequantizeLinear from int8
    assert convs[grouped].input[1] in init and init[convs[grouped].input[1]].data_type == onnx.TensorProto.FLOAT
    for name, node in convs.items():
        if name != grouped:
            dq = producers[node.input[1]]
            assert dq.op_type == "DequantizeLinear" and init[dq.input[0]].data_type == onnx.TensorProto.INT8
    assert "1 of 6 quantizable nodes kept in float" in q.summary() and "Conv 1" in q.summary()


def test_selection_option_errors(tiny, tmp_path: Path) -> None:
    ex, calib, _ = tiny
    with pytest.raises(ExportError, match="unknown int8 node selection 'some'; choose one of all, auto"):
        export.quantize_int8(ex.path, tmp_path / "x.onnx", ex.spec, calib, select="some", latency_rounds=0)
    with pytest.raises(ExportError, match="'auto' needs static QDQ quantization .* mode='dynamic'"):
        export.quantize_int8(ex.path, tmp_path / "x.onnx", ex.spec, calib, mode="dynamic", select="auto",
                             latency_rounds=0)
    with pytest.raises(ExportError, match="quant_format='qoperator'"):
        export.quantize_int8(ex.path, tmp_path / "x.onnx", ex.spec, calib, quant_format="qoperator",
                             select="auto", latency_rounds=0)
    with pytest.raises(ExportError, match="--int8-select auto needs --int8-mode static"):
        export_main(["net", "--out", str(tmp_path), "--int8", "--int8-mode", "dynamic", "--int8-select", "auto"])
    assert not (tmp_path / "x.onnx").exists()


def test_qat_of_a_task_whose_loss_is_inside_the_model_is_a_clear_config_error(tmp_path) -> None:
    """A detector matches anchors to targets inside the model, which an exported inference graph cannot:
    ``train.qat`` refuses it up front with one line instead of a TypeError deep in the first step."""
    from zoo.train.engine import fit

    from zoo.errors import ConfigError

    cfg = {"task": "detection", "model": {"name": "test_efficientnet", "head": "retinanet"},
           "data": {"dataset": "synthetic", "root": str(tmp_path / "data"), "img_size": 64, "batch_size": 2,
                    "synth": {"num_images": 6, "num_classes": 2}},
           "train": {"qat": True, "epochs": 1}, "out_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="train.qat=true trains an exported inference graph, and a detection"):
        fit(cfg)


def test_qat_of_segmentation_trains_the_graph_on_the_loss_of_its_outputs(tmp_path) -> None:
    """Segmentation computes its loss inside the model from targets; under ``train.qat`` the trainer computes the
    same cross-entropy from the fake-quantized graph's logits, so the graph trains (finite loss, a validation
    mIoU) and its checkpoint is the QAT graph's state."""
    pytest.importorskip("executorch")  # the XNNPACK QAT quantizer
    import math

    from safetensors.torch import load_file
    from zoo.train.engine import fit

    import zoo
    from zoo.quantization import prepare_qat_model

    cfg = {"task": "segmentation", "model": {"name": "test_efficientnet", "head": "fpn"},
           "data": {"dataset": "synthetic", "root": str(tmp_path / "data"), "img_size": 32, "batch_size": 2,
                    "synth": {"num_images": 8, "num_classes": 2}},
           "train": {"qat": True, "epochs": 1, "seed": 0}, "sched": {"warmup_epochs": 0},
           "out_dir": str(tmp_path / "run")}
    result = fit(cfg)
    run = tmp_path / "run"
    state = load_file(str(run / "last.safetensors"))
    assert any("activation_post_process" in k for k in state)  # the fake-quantized graph's own state
    model = zoo.create_model("test_efficientnet", task="segmentation", head="fpn", num_classes=2)
    graph = prepare_qat_model(model, "segmentation", 3, 32)
    assert callable(graph.qat_loss)
    logits = graph(torch.randn(2, 3, 32, 32))
    targets = torch.randint(0, 2, (2, 32, 32))
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(graph.qat_loss(logits, targets)["loss_seg"], expected)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(last["train_loss"]) and result["best_metric"] == "miou" and 0 <= result["best"] <= 1


def test_qat_graph_has_no_random_masks_so_it_can_lower_to_executorch(tmp_path) -> None:
    """What the QAT graph needs to become an int8 ``.pte``: no stochastic depth or dropout (their
    ``aten.bernoulli`` masks are not Core ATen) and no tensor above six dimensions (XNNPACK's limit), and the
    exporter must rebuild the very graph that was trained."""
    pytest.importorskip("executorch")
    from zoo.export.pt2e import qat_training_graph

    import zoo
    from zoo.config import load_config
    from zoo.quantization import prepare_qat_model

    model = zoo.create_model("emov2_1m", num_classes=4, drop_path_rate=0.2, drop_rate=0.2)
    assert any(getattr(m, "drop_prob", 0.0) > 0 for m in model.modules())
    graph = prepare_qat_model(model, "classification", 3, 32)
    calls = [n for n in graph.graph.nodes if n.op == "call_function"]
    assert calls and not any("bernoulli" in str(n.target) for n in calls)
    # captured under the export switch: EMOv2's graph-form attention, within XNNPACK's six dimensions
    ranks = [n.meta["val"].dim() for n in calls if isinstance(n.meta.get("val"), torch.Tensor)]
    assert ranks and max(ranks) <= 6
    assert not any("dropout" in str(n.target) for n in calls)
    # the same graph (same quantizers) whatever the drop rates: the exporter rebuilds it from the checkpoint
    plain = prepare_qat_model(zoo.create_model("emov2_1m", num_classes=4), "classification", 3, 32)
    assert plain.state_dict().keys() == graph.state_dict().keys()
    # after a training step (which can change a prepared graph's set of observer modules) the rebuild still loads
    graph.train()
    graph(torch.randn(2, 3, 32, 32))
    cfg = load_config({"model": {"name": "emov2_1m", "kwargs": {"drop_path_rate": 0.2}}, "data": {"img_size": 32},
                       "train": {"qat": True}})
    meta = {"model": "emov2_1m", "task": "classification", "num_classes": 4, "in_chans": 3,
            "input_size": [3, 32, 32], "config": cfg.to_dict()}
    ckpt = zoo.save_checkpoint(graph, tmp_path / "qat.safetensors", meta)
    assert qat_training_graph(ckpt, zoo.read_metadata(ckpt)).state_dict().keys() == graph.state_dict().keys()


def test_qat_graph_trains_and_its_checkpoint_converts_with_the_learned_quantizers(tmp_path) -> None:
    """``train.qat``: a fake-quantized graph with a dynamic batch that trains; its checkpoint (weights + quantizer
    state) loads strictly into the rebuilt graph and converts to an int8 graph computing what the QAT graph does."""
    pytest.importorskip("executorch")
    from zoo.export.pt2e import is_qat_checkpoint, qat_quantized_graph

    import zoo
    from zoo.config import load_config
    from zoo.quantization import prepare_qat_model

    torch.manual_seed(0)
    graph = prepare_qat_model(zoo.create_model("test_efficientnet", num_classes=4), "classification", 3, 16)
    graph.train()
    opt = torch.optim.SGD(graph.parameters(), lr=0.01)
    for _ in range(2):  # batch 3 and 5: the batch axis is dynamic
        for n in (3, 5):
            opt.zero_grad()
            nn.functional.cross_entropy(graph(torch.randn(n, 3, 16, 16)), torch.randint(0, 4, (n,))).backward()
            opt.step()
    graph.eval()
    cfg = load_config({"model": {"name": "test_efficientnet"}, "data": {"img_size": 16}, "train": {"qat": True}})
    meta = {"model": "test_efficientnet", "task": "classification", "num_classes": 4, "in_chans": 3,
            "input_size": [3, 16, 16], "config": cfg.to_dict()}
    ckpt = zoo.save_checkpoint(graph, tmp_path / "qat.safetensors", meta)
    meta = zoo.read_metadata(ckpt)
    assert is_qat_checkpoint(meta)
    quantized = qat_quantized_graph(ckpt, meta)
    assert any("quantize_per" in str(n.target) for n in quantized.graph.nodes)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref, got = graph(x), quantized(x)
    assert float((ref - got).abs().max()) <= 0.15 * float(ref.abs().max()) + 1e-3  # quantization noise
