"""ULSAM module and the ULSAM MobileNets: the official module's function, the paper's parameter/MAC table, timm."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import zoo
from zoo.backbones.ulsam_mobilenet import checkpoint_filter_fn
from zoo.bench import count_macs, count_params
from zoo.errors import InputShapeError
from zoo.layers.ulsam import ULSAM, convert_official_ulsam


def _official_layout_state(channels: int, g: int) -> dict[str, torch.Tensor]:
    """Random weights in the official module's key layout (one SubSpace per group, as Nandan91/ULSAM)."""
    c = channels // g
    sd: dict[str, torch.Tensor] = {}
    for i in range(g):
        p = f"subspaces.{i}."
        sd[p + "conv_dws.weight"] = torch.randn(c, 1, 1, 1)
        sd[p + "conv_dws.bias"] = torch.randn(c)
        sd[p + "conv_point.weight"] = torch.randn(1, c, 1, 1) / c ** 0.5
        sd[p + "conv_point.bias"] = torch.randn(1)
        for bn, k in (("bn_dws", c), ("bn_point", 1)):
            sd[p + f"{bn}.weight"] = torch.rand(k) + 0.5
            sd[p + f"{bn}.bias"] = torch.randn(k) * 0.1
            sd[p + f"{bn}.running_mean"] = torch.randn(k) * 0.1
            sd[p + f"{bn}.running_var"] = torch.rand(k) + 0.5
            sd[p + f"{bn}.num_batches_tracked"] = torch.tensor(0)
    return sd


def _official_forward(x: torch.Tensor, sd: dict[str, torch.Tensor], g: int) -> torch.Tensor:
    """The official SubSpace forward (eval mode), step by step, per subspace, from the official weights."""
    outs = []
    for i, xi in enumerate(torch.chunk(x, g, dim=1)):
        p = f"subspaces.{i}."

        def bn(t: torch.Tensor, name: str, p: str = p) -> torch.Tensor:
            return F.batch_norm(t, sd[p + name + ".running_mean"], sd[p + name + ".running_var"],
                                sd[p + name + ".weight"], sd[p + name + ".bias"], False, 0.0, 1e-5)

        a = F.conv2d(xi, sd[p + "conv_dws.weight"], sd[p + "conv_dws.bias"], groups=xi.shape[1])
        a = F.relu(bn(a, "bn_dws"))
        a = F.max_pool2d(a, 3, 1, 1)
        a = F.relu(bn(F.conv2d(a, sd[p + "conv_point.weight"], sd[p + "conv_point.bias"]), "bn_point"))
        m, n, h, w = a.shape
        a = torch.softmax(a.view(m, n, -1), dim=2).view(m, n, h, w)
        outs.append(a.expand_as(xi) * xi + xi)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("channels,g", [(512, 4), (96, 4), (160, 4), (64, 1), (48, 8)])
def test_ulsam_param_count_is_5C_plus_3g(channels: int, g: int) -> None:
    assert count_params(ULSAM(channels, g)) == 5 * channels + 3 * g


@pytest.mark.parametrize("channels,g,hw", [(32, 4, 7), (24, 2, 5)])
def test_ulsam_equals_official_subspace_forward_on_official_weights(channels: int, g: int, hw: int) -> None:
    sd = _official_layout_state(channels, g)
    m = ULSAM(channels, g).eval()
    m.load_state_dict(convert_official_ulsam(sd), strict=True)
    x = torch.randn(2, channels, hw, hw)
    torch.testing.assert_close(m(x), _official_forward(x, sd, g), rtol=1e-5, atol=1e-6)


def test_ulsam_export_graph_is_the_official_function_with_runtime_friendly_ops(tmp_path) -> None:
    """Under timm's export switch (``set_exportable(True)``, what ``zoo export`` sets), ULSAM emits the official ops
    (a real depthwise Conv and MaxPool, which onnxruntime fuses with BN/ReLU and runs in its NCHWc layout) instead
    of the eager rewrites (Pad + 6 Slice + 4 Max, ~3x slower there); the export-time function must still be the
    official one, and the file must compute it. Without the switch the eager rewrites are traced."""
    import onnx
    import onnxruntime as ort

    sd = _official_layout_state(32, 4)
    m = ULSAM(32, 4).eval()
    m.load_state_dict(convert_official_ulsam(sd), strict=True)
    x = torch.randn(2, 32, 7, 9)
    torch.testing.assert_close(m.attention_graph(x), m.attention(x), rtol=1e-5, atol=1e-7)
    from timm.layers import set_exportable

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(m, (x,), str(plain), input_names=["x"], dynamo=False, opset_version=18)
    assert "MaxPool" not in [n.op_type for n in onnx.load(str(plain)).graph.node]
    path = tmp_path / "ulsam.onnx"
    with set_exportable(True):
        torch.onnx.export(m, (x,), str(path), input_names=["x"], dynamo=False, opset_version=18)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    attention_ops = set(ops[:ops.index("Softmax")])
    assert "MaxPool" in ops and ops.count("Conv") == 2 and not {"Pad", "Max", "Mul"} & attention_ops, ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), _official_forward(x, sd, 4), rtol=1e-5, atol=1e-6)


def test_ulsam_attention_maps_are_softmax_over_positions_one_per_subspace() -> None:
    m = ULSAM(16, 4).eval()
    att = m.attention(torch.randn(3, 16, 5, 6))
    assert att.shape == (3, 4, 5, 6)
    torch.testing.assert_close(att.sum(dim=(2, 3)), torch.ones(3, 4))
    # with zeroed convs and BN shifts every map is uniform, so the output is x * (1 + 1/HW)
    x = torch.ones(1, 16, 5, 6)
    with torch.no_grad():
        m.conv_dws.weight.zero_(), m.conv_dws.bias.zero_(), m.conv_point.weight.zero_(), m.conv_point.bias.zero_()
        m.bn_dws.bias.zero_(), m.bn_point.bias.zero_()
    m.bn_dws.running_mean.zero_(), m.bn_point.running_mean.zero_()
    torch.testing.assert_close(m(x), x * (1 + 1 / 30))


def test_ulsam_has_no_global_side_effects_and_official_bn_momentum() -> None:
    import importlib

    import zoo.layers.ulsam as mod

    importlib.reload(mod)
    assert torch.empty(1).device.type == "cpu" and torch.get_default_dtype() == torch.float32
    m = ULSAM(8, 2)
    assert m.bn_dws.momentum == 0.9 and m.bn_point.momentum == 0.9
    assert m.conv_dws.bias is not None and m.conv_point.bias is not None
    from zoo.layers.ulsam import _max_pool_3x3_nonneg

    a = torch.relu(torch.randn(2, 3, 5, 7))
    assert torch.equal(_max_pool_3x3_nonneg(a), F.max_pool2d(a, 3, 1, 1))


def test_ulsam_rejects_bad_splits_and_channels() -> None:
    with pytest.raises(ValueError, match="num_splits=5 must be a positive divisor of channels=96"):
        ULSAM(96, 5)
    with pytest.raises(InputShapeError, match=r"\(B, 96, H, W\)"):
        ULSAM(96, 4)(torch.randn(1, 64, 7, 7))


def test_mobilenetv1_ulsam_params_and_macs_match_paper_row() -> None:
    m = timm.create_model("mobilenetv1_ulsam")
    assert count_params(m) == 3_965_748
    macs = count_macs(m, (3, 224, 224))
    # 568.7M baseline - one 14x14x512 DS layer (52.3M) + ULSAM's grouped 1x1 conv to 4 maps (its 1x1 depthwise conv
    # runs as an elementwise addcmul, which FlopCounterMode does not count)
    assert macs == 516_557_312
    assert abs(macs / 516.4e6 - 1) < 0.001
    assert isinstance(m.blocks[3][5], ULSAM) and m.blocks[3][5].num_splits == 4
    assert sum(isinstance(b, ULSAM) for s in m.blocks for b in s) == 1


def test_mobilenetv1_ulsam_without_replacement_is_timm_mobilenetv1_100() -> None:
    ours = timm.create_model("mobilenetv1_ulsam", ulsam_positions=()).eval()
    ref = timm.create_model("mobilenetv1_100").eval()
    assert count_params(ours) == 4_231_976
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("positions,params", [((12, 15), 3_067_904), ((12,), 3_387_092), ((15,), 3_185_684),
                                              ((15, 16), 2_866_496), ((12, 13, 15, 16), 2_630_936)])
def test_mobilenetv2_ulsam_param_counts_for_the_paper_rows(positions: tuple[int, ...], params: int) -> None:
    m = timm.create_model("mobilenetv2_ulsam", ulsam_positions=positions)
    assert count_params(m) == params
    assert [i for i, f in enumerate(m.features) if isinstance(f, ULSAM)] == list(positions)


def test_mobilenetv2_ulsam_macs_within_1pct_of_paper() -> None:
    m = timm.create_model("mobilenetv2_ulsam")
    macs = count_macs(m, (3, 224, 224))
    assert macs == 262_632_672
    assert abs(macs / 261.88e6 - 1) < 0.01


def test_mobilenetv2_ulsam_without_replacement_is_torchvision_mobilenet_v2() -> None:
    ref = torchvision.models.mobilenet_v2().eval()
    ours = timm.create_model("mobilenetv2_ulsam", ulsam_positions=()).eval()
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))


def test_checkpoint_with_official_ulsam_keys_loads_strictly(tmp_path) -> None:
    model = timm.create_model("mobilenetv2_ulsam").eval()
    sd = model.state_dict()
    off = {k: v for k, v in sd.items() if not k.startswith(("features.12.", "features.15."))}
    for idx, c in ((12, 96), (15, 160)):
        off.update({f"features.{idx}.{k}": v for k, v in _official_layout_state(c, 4).items()})
    off = {("classifier.1." + k[len("classifier."):] if k.startswith("classifier.") else k): v for k, v in off.items()}
    torch.save(off, tmp_path / "official_layout.pth")
    loaded = zoo.create_model("mobilenetv2_ulsam", checkpoint_path=tmp_path / "official_layout.pth").eval()
    x = torch.randn(1, 96, 4, 4)
    ref = _official_forward(x, {k[len("features.12."):]: v for k, v in off.items() if k.startswith("features.12.")}, 4)
    torch.testing.assert_close(loaded.features[12](x), ref, rtol=1e-5, atol=1e-6)


def test_replacing_a_layer_that_changes_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"position\(s\) \[11\].*\[3, 5, 6, 8, 9, 10, 12, 13, 15, 16\]"):
        timm.create_model("mobilenetv2_ulsam", ulsam_positions=(11,))
    with pytest.raises(ValueError, match=r"\[2, 4, 6, 7, 8, 9, 10, 12\]"):
        timm.create_model("mobilenetv1_ulsam", ulsam_positions=(5,))
    with pytest.raises(ValueError, match="num_splits=7"):
        timm.create_model("mobilenetv2_ulsam", num_splits=7)


@pytest.mark.parametrize("name,chs", [("mobilenetv1_ulsam", [64, 128, 256, 512, 1024]),
                                      ("mobilenetv2_ulsam", [16, 24, 32, 96, 320])])
def test_timm_contract(name: str, chs: list[int]) -> None:
    x = torch.randn(2, 3, 32, 32)
    feats = timm.create_model(name, features_only=True).eval()
    assert feats.feature_info.channels() == chs
    assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
    outs = feats(x)
    assert [tuple(o.shape) for o in outs] == [(2, c, 32 // r, 32 // r) for c, r in zip(chs, [2, 4, 8, 16, 32])]

    m = timm.create_model(name).eval()
    final, inter = m.forward_intermediates(x, indices=[1, 3])
    assert [o.shape[1] for o in inter] == [chs[1], chs[3]]
    torch.testing.assert_close(final, m.forward_features(x))
    only = m.forward_intermediates(x, indices=[1, 3], intermediates_only=True, stop_early=True)
    for a, b in zip(only, inter):
        torch.testing.assert_close(a, b)
    pooled = m.forward_head(m.forward_features(x), pre_logits=True)
    assert pooled.shape == (2, m.num_features)
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7 and m(x).shape == (2, 7)
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)
    with pytest.raises(InputShapeError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(1, 4, 32, 32))


def test_zoo_info_reports_ulsam_models() -> None:
    from zoo.info import model_info

    assert model_info("mobilenetv1_ulsam", macs=False)["params"] == 3_965_748
    info = model_info("mobilenetv2_ulsam", macs=False)
    assert info["params"] == 3_067_904 and info["family"] == "ulsam_mobilenet"
    assert info["feature_reductions"] == [2, 4, 8, 16, 32]
