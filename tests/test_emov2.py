"""EMOv2 as a specification: official sizes and costs, official checkpoint layout and numerics, any input size,
timm's model contract, export, and the ``zoo bench`` command.

Reference numbers come from the official code (zhangzjn/EMOv2 @ 582a96f, ``model/lib_emo/emo2.py``), run outside
the repository: parameter counts, fvcore's per-operator counts, the state_dict layout and a set of logits.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import set_exportable
from torch import nn

import zoo
from zoo.backbones.emov2 import ConvNormAct, EMOv2, SpanningWindowAttention, checkpoint_filter_fn
from zoo.bench import count_macs, count_params
from zoo.checkpoint import save_checkpoint
from zoo.errors import InputShapeError, UnknownModelError

VARIANTS = ["emov2_1m", "emov2_2m", "emov2_5m", "emov2_20m"]
OFFICIAL_PARAMS = {"emov2_1m": 1_460_844, "emov2_2m": 2_384_312, "emov2_5m": 5_126_440, "emov2_20m": 20_195_208}
# Paper / FIGURES.md MACs at 224^2 (fvcore on the official model).
PAPER_GMACS = {"emov2_1m": 0.2848, "emov2_2m": 0.4875, "emov2_5m": 1.0355, "emov2_20m": 4.0172}
# fvcore's conv + matmul + linear counts of the official model at 224^2: FlopCounterMode must agree exactly.
OFFICIAL_CONV_MATMUL_LINEAR = {"emov2_1m": 279_936_484, "emov2_2m": 480_811_600, "emov2_5m": 1_025_113_984,
                               "emov2_20m": 3_997_004_032}

# Representative keys and shapes of the official EMO2_5M_k5_hybrid state_dict (272 entries in all).
OFFICIAL_5M_KEYS = [
    ("stage0.0.conv.weight", (24, 3, 3, 3)),
    ("stage0.0.conv.bias", (24,)),
    ("stage0.0.norm.running_var", (24,)),
    ("stage0.1.conv.weight", (24, 1, 3, 3)),
    ("stage0.2.conv.weight", (24, 24, 1, 1)),
    ("stage1.0.norm.weight", (24,)),
    ("stage1.0.eops.0.net.conv.weight", (96, 24, 1, 1)),
    ("stage1.0.eops.0.net.conv.bias", (96,)),
    ("stage1.0.conv_local.conv.weight", (96, 1, 5, 5)),
    ("stage1.0.conv_local.norm.num_batches_tracked", ()),
    ("stage1.0.proj.conv.weight", (48, 96, 1, 1)),
    ("stage1.0.ls.gamma", (1, 48, 1, 1)),
    ("stage1.1.eops.0.net.conv.weight", (96, 48, 1, 1)),
    ("stage3.0.norm.norm.weight", (72,)),
    ("stage3.0.eops.0.net.conv.weight", (576, 72, 1, 1)),
    ("stage3.1.norm.norm.bias", (160,)),
    ("stage3.1.eops.0.qk.conv.weight", (320, 160, 1, 1)),
    ("stage3.1.eops.0.qk.conv.bias", (320,)),
    ("stage3.1.eops.0.v.conv.weight", (640, 160, 1, 1)),
    ("stage3.1.eops.0.v.conv.bias", (640,)),
    ("stage3.1.conv_local.conv.weight", (640, 1, 5, 5)),
    ("stage3.1.proj.conv.weight", (160, 640, 1, 1)),
    ("stage4.2.eops.0.qk.conv.weight", (576, 288, 1, 1)),
    ("stage4.2.ls.gamma", (1, 288, 1, 1)),
    ("norm.norm.weight", (288,)),
    ("norm.norm.bias", (288,)),
    ("head.weight", (1000, 288)),
    ("head.bias", (1000,)),
]
OFFICIAL_5M_NUM_KEYS = 272

# Logits of the official EMO2_1M_k5_hybrid with deterministic_weights() on golden_input() (100x76: not a multiple
# of the window nor of 32, so the attention pads at stride 16 and 32).
OFFICIAL_1M_GOLDEN_FIRST8 = [-1.3175383806228638, 1.6557914018630981, -1.4093908071517944, -0.4157903492450714,
                             -0.554232656955719, 0.0479559600353241, 0.19362440705299377, -0.8061735033988953]
OFFICIAL_1M_GOLDEN_SUM = -19.88605308532715
OFFICIAL_1M_GOLDEN_ABS_SUM = 757.752197265625


def deterministic_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights that depend only on the (sorted) official key names and shapes; norms and layer scales are far from
    their init so a wrong epsilon, a missing scale or a swapped partition changes the logits."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k in sorted(state):
        t = state[k]
        if not t.is_floating_point():
            out[k] = t.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(t.shape, generator=g)
        elif k.endswith("gamma"):
            out[k] = 0.5 * torch.randn(t.shape, generator=g)
        elif t.dim() >= 2:
            out[k] = torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5
        elif "norm" in k and k.endswith("weight"):
            out[k] = 1 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[k] = 0.1 * torch.randn(t.shape, generator=g)
    return out


def golden_input() -> torch.Tensor:
    return torch.sin(torch.linspace(-2, 2, 3 * 100 * 76).reshape(1, 3, 100, 76) * 7.0) * 1.5


def official_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights as the official training script stores them: DataParallel's ``module.`` prefix on every key."""
    return {"module." + k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is faster than two fighting over a shared CI core, and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_1m() -> EMOv2:
    torch.manual_seed(0)
    m = zoo.create_model("emov2_1m").eval()
    m.load_state_dict(deterministic_weights(m.state_dict()))
    return m


# --- sizes and costs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_emov2_param_count_matches_official(name: str) -> None:
    assert count_params(zoo.create_model(name)) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", ["emov2_1m_256", "emov2_5m_512", "emov2_20m_256"])
def test_emov2_window8_variants_share_weights_layout(name: str) -> None:
    """The official _256/_512 variants only change the attention window to 8; the weights are the same."""
    m = zoo.create_model(name)
    base = name.rsplit("_", 1)[0]
    assert count_params(m) == OFFICIAL_PARAMS[base]
    assert {a.window_size for a in m.modules() if isinstance(a, SpanningWindowAttention)} == {8}
    size = int(name.rsplit("_", 1)[1])
    assert m.pretrained_cfg["input_size"] == (3, size, size)


@pytest.mark.parametrize("name", VARIANTS)
def test_emov2_macs_match_official(name: str) -> None:
    """FlopCounterMode counts convs and matmuls exactly as fvcore does on the official model; fvcore's published
    totals also count every BatchNorm element once and every LayerNorm element 2.5 times (its layer_norm handle),
    which with ours lands within 1% of the paper's figures."""
    model = zoo.create_model(name).eval()
    norm_elements = {"bn": 0, "ln": 0}

    def counter(kind: str):
        return lambda mod, inp, out: norm_elements.__setitem__(kind, norm_elements[kind] + out.numel())

    # In eval the BN after a conv is folded into it (ConvNormAct), so count BN elements at the ConvNormAct output.
    bn_sites = [m for m in model.modules() if isinstance(m, ConvNormAct) and isinstance(m.norm, nn.BatchNorm2d)]
    folded = {id(m.norm) for m in bn_sites}
    bn_sites += [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in folded]
    ln_sites = [m for m in model.modules() if isinstance(m, type(model.norm))]
    handles = [m.register_forward_hook(counter("bn")) for m in bn_sites]
    handles += [m.register_forward_hook(counter("ln")) for m in ln_sites]
    macs = count_macs(model, (3, 224, 224))  # the same forward pass feeds the norm counters
    for h in handles:
        h.remove()
    assert macs == OFFICIAL_CONV_MATMUL_LINEAR[name]
    fvcore_total = macs + norm_elements["bn"] + 2.5 * norm_elements["ln"]
    assert abs(fvcore_total / 1e9 - PAPER_GMACS[name]) / PAPER_GMACS[name] < 0.01
    assert abs(macs / 1e9 - PAPER_GMACS[name]) / PAPER_GMACS[name] < 0.02  # conv+matmul alone: 0.5-1.7% below


# --- official checkpoints ----------------------------------------------------------------------------------------
def test_emov2_5m_state_dict_has_official_layout() -> None:
    sd = zoo.create_model("emov2_5m").state_dict()
    assert len(sd) == OFFICIAL_5M_NUM_KEYS
    for key, shape in OFFICIAL_5M_KEYS:
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key


def test_emov2_1m_logits_equal_official_golden(model_1m: EMOv2) -> None:
    with torch.no_grad():
        y = model_1m(golden_input())
    assert y.shape == (1, 1000)
    torch.testing.assert_close(y[0, :8], torch.tensor(OFFICIAL_1M_GOLDEN_FIRST8), atol=1e-4, rtol=0)
    assert abs(y.sum().item() - OFFICIAL_1M_GOLDEN_SUM) < 1e-3
    assert abs(y.abs().sum().item() - OFFICIAL_1M_GOLDEN_ABS_SUM) < 1e-3


@pytest.mark.parametrize("wrapper", [None, "net", "net_E", "state_dict", "model"])
def test_emov2_loads_official_checkpoint_formats_strictly(model_1m: EMOv2, tmp_path, wrapper: str | None) -> None:
    sd = official_layout(model_1m)
    path = tmp_path / "official.pth"
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 300}, path)
    loaded = zoo.create_model("emov2_1m", checkpoint_path=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model_1m(x))


def test_emov2_checkpoint_filter_maps_official_keys_onto_ours(model_1m: EMOv2) -> None:
    mapped = checkpoint_filter_fn(official_layout(model_1m), model_1m)
    assert set(mapped) == set(model_1m.state_dict())
    timm_style = {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in model_1m.state_dict().items()}
    assert set(checkpoint_filter_fn(timm_style, model_1m)) == set(model_1m.state_dict())


def test_emov2_rejects_checkpoint_of_another_variant(model_1m: EMOv2, tmp_path) -> None:
    path = tmp_path / "official_1m.pth"
    torch.save({"net": official_layout(model_1m)}, path)
    with pytest.raises(zoo.errors.CheckpointError, match="does not fit EMOv2"):
        zoo.create_model("emov2_2m", checkpoint_path=path)


def test_emov2_round_trips_our_safetensors_checkpoint(model_1m: EMOv2, tmp_path) -> None:
    path = save_checkpoint(model_1m, tmp_path / "ours.safetensors", {"model": "emov2_1m", "num_classes": 1000})
    loaded = zoo.create_model(checkpoint_path=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model_1m(x))


# --- any input size ------------------------------------------------------------------------------------------------
def _reference_spanning_attention(attn: SpanningWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """The official semantics written out window by window: zero-pad the input right/bottom to a multiple of w,
    project, attend inside each close (contiguous) and each remote (strided) window, sum, crop."""
    B, C, H, W = x.shape
    w = attn.window_size
    xp = F.pad(x, (0, (-W) % w, 0, (-H) % w))
    Hp, Wp = xp.shape[-2:]
    nh, nw = Hp // w, Wp // w
    q, k = attn.qk.conv(xp).chunk(2, dim=1)
    v = attn.v.act(attn.v.conv(xp))
    heads, out = attn.num_heads, torch.zeros_like(v)
    windows = [(slice(i * w, (i + 1) * w), slice(j * w, (j + 1) * w)) for i in range(nh) for j in range(nw)]
    windows += [(slice(i, None, nh), slice(j, None, nw)) for i in range(nh) for j in range(nw)]

    def tokens(t: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:  # (B, heads, w*w, channels per head)
        return t[:, :, rows, cols].reshape(B, heads, t.shape[1] // heads, -1).transpose(-2, -1)

    for rows, cols in windows:
        a = (tokens(q, rows, cols) @ tokens(k, rows, cols).transpose(-2, -1) / math.sqrt(attn.dim_head)).softmax(-1)
        o = (a @ tokens(v, rows, cols)).transpose(-2, -1).reshape(B, -1, w, w)
        out[:, :, rows, cols] += o
    return out[:, :, :H, :W]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("hw", [(7, 7), (10, 9), (3, 5), (16, 8), (4, 4), (2, 3)])
def test_spanning_window_attention_matches_window_by_window_reference(hw: tuple[int, int], graph: bool) -> None:
    """Both forward paths: eager, and the one ONNX / torch.export trace under the export switch (separate close
    and remote attention calls; (4, 4) and (2, 3) pad to a single window, where the graph path attends once and
    doubles)."""
    torch.manual_seed(0)
    attn = SpanningWindowAttention(dim=8, dim_out=16, dim_head=4, window_size=4).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
        x = torch.randn(2, 8, *hw)
        with set_exportable(graph):
            got = attn(x)
        torch.testing.assert_close(got, _reference_spanning_attention(attn, x), atol=1e-4, rtol=1e-4)


def test_emov2_graph_path_equals_eager_path() -> None:
    """The forward under the export switch (BN pre-norms folded into the expansion conv, GELU spelled out,
    reshaped attention) computes the eager model's logits; BN statistics are randomised (after ``eval()``, so the
    cached folds must follow them) so the fold is really tested."""
    torch.manual_seed(0)
    m = zoo.create_model("emov2_1m").eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()
            elif hasattr(mod, "gamma"):
                mod.gamma.fill_(1.0)
        x = torch.randn(2, 3, 120, 72)
        eager = m(x)
        with set_exportable(True):
            graph = m(x)
    assert eager.abs().max() > 0.1
    torch.testing.assert_close(graph, eager, atol=1e-5, rtol=1e-5)


def test_emov2_graph_path_stays_within_six_dimensions() -> None:
    """XNNPACK defines tensors of at most 6 dimensions; one rank-7 view in the exported graph makes an ExecuTorch
    file fail to load ("Failed to define tensor ... xnn_status_unsupported_parameter"). Every tensor the export
    path produces at 224² (several windows per side in stages 2-3) stays within 6; the eager path, never exported,
    uses 7- and 8-dimensional views and shows the probe sees them."""
    from torch.overrides import TorchFunctionMode

    class MaxRank(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.max_rank = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max_rank = max(self.max_rank, t.dim())
            return out

    m = zoo.create_model("emov2_1m").eval()
    x = torch.randn(1, 3, 224, 224)
    ranks = {}
    for exportable in (True, False):
        with torch.no_grad(), set_exportable(exportable), MaxRank() as probe:
            m(x)
        ranks[exportable] = probe.max_rank
    assert ranks[True] <= 6 < ranks[False], ranks


def test_emov2_onnx_graph_is_shaped_for_onnxruntime(tmp_path) -> None:
    """What makes EMOv2 fast in onnxruntime, pinned on a dynamo export under the export switch (as the exporter
    runs it, so this also checks that the switch selects the graph path): no BatchNormalization left (stem
    BNs folded into their convs, block pre-norm BNs into the expansion conv), every erf-GELU fused by onnxruntime,
    no stack/chunk copies (Concat/Split/Squeeze/Unsqueeze) and at most 9 Transposes per windowed attention block
    (q, k, v x close/remote, 2 outputs, 1 to NCHW) and 6 per single-window one. Before: 7 per block plus Concat,
    Split and Unsqueeze copies, and with the dynamo exporter GELU as five unfused elementwise ops."""
    import onnx
    import onnxruntime as ort
    from zoo.export.onnx_export import to_onnx

    m = zoo.create_model("emov2_1m").eval()
    # 128^2: stage 3 is 8x8 (padded to 14x14: 2x2 windows of 7), stage 4 is 4x4 (one window)
    with set_exportable(True):
        ex = to_onnx(m, tmp_path / "m.onnx", 128, exporter="dynamo", fallback=False)
    raw = [n.op_type for n in onnx.load(str(ex.path)).graph.node]
    assert "BatchNormalization" not in raw
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(ex.path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("Gelu") == 11 and "Erf" not in ops  # 1m: 8 + 3 blocks in the GELU stages
    assert not {"Concat", "Split", "Squeeze", "Unsqueeze", "BatchNormalization"} & set(ops)
    assert ops.count("Transpose") <= 7 * 9 + 2 * 6  # + 1 per single-window block where a Pad sits in between


@pytest.mark.parametrize("hw", [(224, 224), (256, 256), (320, 192), (100, 76)])
def test_emov2_accepts_any_input_size(model_1m: EMOv2, hw: tuple[int, int]) -> None:
    """Any size works, as in the official model: convs pad, attention pads to its window and crops back."""
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        feats = model_1m.forward_intermediates(x, intermediates_only=True)
        y = model_1m(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    for f, r in zip(feats, (4, 8, 16, 32)):
        assert f.shape[-2:] == (math.ceil(hw[0] / r), math.ceil(hw[1] / r))


def test_emov2_wrong_channels_raise_input_shape_error(model_1m: EMOv2) -> None:
    with pytest.raises(InputShapeError, match=r"\(B, 3, H, W\).*224, 224"):
        model_1m(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputShapeError):
        model_1m(torch.randn(3, 64, 64))
    gray = zoo.create_model("emov2_1m", in_chans=1, num_classes=5).eval()
    assert gray(torch.randn(1, 1, 40, 40)).shape == (1, 5)


# --- timm contract ------------------------------------------------------------------------------------------------
def test_emov2_features_only_through_timm() -> None:
    m = timm.create_model("emov2_5m", features_only=True, out_indices=(1, 2, 3)).eval()
    assert m.feature_info.channels() == [72, 160, 288]
    assert m.feature_info.reduction() == [8, 16, 32]
    feats = m(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 72, 8, 8), (1, 160, 4, 4), (1, 288, 2, 2)]
    full = timm.create_model("emov2_1m", features_only=True)
    assert full.feature_info.reduction() == [4, 8, 16, 32]
    assert full.feature_info.channels() == [32, 48, 80, 180]


def test_emov2_forward_intermediates_agree_with_forward(model_1m: EMOv2) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model_1m.forward_intermediates(x)
        assert torch.allclose(final, model_1m.forward_features(x))
        assert [t.shape[1] for t in inter] == [32, 48, 80, 180]
        only = model_1m.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
        assert len(only) == 2 and torch.equal(only[0], inter[1]) and torch.equal(only[1], inter[2])
        normed = model_1m.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert torch.allclose(normed[0], final)
        pooled = model_1m.forward_head(final, pre_logits=True)
        assert pooled.shape == (2, 180) and torch.allclose(pooled, final.mean((2, 3)))
        assert torch.allclose(model_1m.forward_head(final), model_1m(x), atol=1e-5)


def test_emov2_classifier_reset_and_weight_decay_groups() -> None:
    m = zoo.create_model("emov2_1m").eval()
    assert m.get_classifier() is m.head and m.head.out_features == 1000
    m.reset_classifier(7)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 180)
    nwd = m.no_weight_decay()
    assert "stage3.1.ls.gamma" in nwd and all(n.endswith("gamma") for n in nwd)
    assert len(nwd) == 2 + 2 + 8 + 3  # one layer scale per block
    assert zoo.create_model("emov2_1m", num_classes=10).head.out_features == 10


def test_emov2_prune_intermediate_layers(model_1m: EMOv2) -> None:
    m = zoo.create_model("emov2_1m").eval()
    m.prune_intermediate_layers(indices=[1])
    assert not hasattr(m, "stage3") and isinstance(m.head, nn.Identity)
    out = m.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[1], intermediates_only=True)
    assert out[0].shape == (1, 48, 4, 4)


def test_emov2_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownModelError, match="emov2_5m"):
        zoo.create_model("emov2-5m")


def test_emov2_eval_is_deterministic_and_does_not_touch_running_stats(model_1m: EMOv2) -> None:
    before = {k: v.clone() for k, v in model_1m.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model_1m(x), model_1m(x))
    assert all(torch.equal(before[k], v) for k, v in model_1m.state_dict().items())


def test_emov2_trains_with_grad_checkpointing_to_the_same_gradients() -> None:
    torch.manual_seed(0)
    a = zoo.create_model("emov2_1m", num_classes=3, drop_path_rate=0.0).train()
    b = zoo.create_model("emov2_1m", num_classes=3, drop_path_rate=0.0).train()
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    ga, gb = a.stage3[1].eops[0].qk.conv.weight.grad, b.stage3[1].eops[0].qk.conv.weight.grad
    assert ga.abs().sum() > 0
    torch.testing.assert_close(ga, gb)


def test_emov2_torch_export() -> None:
    """Every variant shares this code path (only widths, depths and the window differ); all eleven were exported
    once by hand, the test keeps the cheapest so the suite stays fast."""
    m = zoo.create_model("emov2_1m").eval()
    x = torch.randn(1, 3, 48, 40)
    with set_exportable(True):
        ep = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x))


# --- zoo bench -----------------------------------------------------------------------------------------------------
def test_zoo_bench_prints_params_macs_and_latency_columns(capsys) -> None:
    from zoo.bench.cli import main

    assert main(["emov2_1m", "--peer", "none", "--batch", "1", "2", "--size", "32", "--rounds", "1",
                 "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1,460,844" in out and "b1 ms" in out and "b2 ms" in out and "x peer" not in out
    macs = count_macs(zoo.create_model("emov2_1m"), (3, 32, 32))
    assert f"{macs / 1e9:.4f}" in out


def test_zoo_bench_ratio_to_peer_is_one_for_the_peer() -> None:
    from zoo.bench.cli import bench

    rows = bench(["emov2_1m"], peer="emov2_1m_256", batches=(1,), size=(32, 32), rounds=1, warmup=0)
    assert [r["name"] for r in rows] == ["emov2_1m_256", "emov2_1m"]
    assert rows[0]["ratio_b1"] == 1.0 and rows[1]["params"] == OFFICIAL_PARAMS["emov2_1m"]
