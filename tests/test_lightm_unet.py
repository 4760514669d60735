"""LightM-UNet (zoo.backbones.lightm_unet): official parameter counts, official key layout, checkpoint loading,
the timm contract for a dense model, features_only as a backbone, input checks.

The equality with the official network (MrBlankness/LightM-UNet @ 6b72e27 with mamba_ssm replaced by its
reference scan) was measured outside the test suite (their code is not ours to ship): max abs diff 3.0e-6 (2D,
2x3x64x64) and 3.9e-6 (3D, 2x1x16^3); see the README section ``lightm_unet``. The tests pin what made that
possible: identical key names/shapes/order and identical parameter counts.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import zoo
from zoo.backbones.lightm_unet import LightMUNet, RVMLayer
from zoo.bench import count_params
from zoo.errors import CheckpointError, InputShapeError
from zoo.layers.mamba import set_scan_impl

# sha256 over "key:shape" lines of the official network's state_dict, in order (official code at 6b72e27,
# LightMUNet(spatial_dims, init_filters=32, in_channels, out_channels, blocks_down=[1,2,2,4], blocks_up=[1,1,1]))
OFFICIAL_KEYS_SHA256 = {
    (2, 3, 2): "8afc3296526717483ba987b3623d23fb265f668c0b27ab89d2bf7bf4d922ae6e",
    (3, 1, 3): "acc34f56adb6863eba6a605b91408bdb39d3ebe8b4fb5bf5ce7cb842dffcd406",
}
OFFICIAL_KEY_SAMPLES_2D = {  # a readable excerpt of the same layout (2D, 3 -> 2 classes)
    "convInit.0.conv.weight": (3, 1, 3, 3),
    "convInit.1.conv.weight": (32, 3, 1, 1),
    "down_layers.0.1.conv1.skip_scale": (1,),
    "down_layers.0.1.conv1.mamba.in_proj.weight": (128, 32),
    "down_layers.0.1.conv1.mamba.x_proj.weight": (2 + 32, 64),
    "down_layers.1.0.0.proj.weight": (64, 32),
    "down_layers.3.4.conv2.mamba.A_log": (512, 16),
    "up_layers.0.0.conv.0.conv.weight": (128, 1, 3, 3),
    "up_samples.2.0.conv.weight": (32, 64, 1, 1),
    "conv_final.2.0.conv.weight": (32, 1, 1, 1),
    "conv_final.2.1.conv.bias": (2,),
}


@pytest.fixture(scope="module")
def model_2d() -> LightMUNet:
    torch.manual_seed(0)
    return zoo.create_model("lightm_unet_2d", in_chans=3, num_classes=2).eval()


def _keys_sha(model: torch.nn.Module) -> str:
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()


def test_lightm_unet_2d_param_count_matches_official(model_2d):
    assert count_params(model_2d) == 5_011_765


def test_lightm_unet_3d_param_count_matches_official():
    assert count_params(zoo.create_model("lightm_unet_3d", in_chans=1, num_classes=3)) == 5_015_766


def test_state_dict_layout_is_the_official_one(model_2d):
    shapes = {k: tuple(v.shape) for k, v in model_2d.state_dict().items()}
    for k, shape in OFFICIAL_KEY_SAMPLES_2D.items():
        assert shapes[k] == shape, k
    assert len(shapes) == 362
    assert _keys_sha(model_2d) == OFFICIAL_KEYS_SHA256[(2, 3, 2)]
    assert _keys_sha(LightMUNet(spatial_dims=3, in_chans=1, num_classes=3)) == OFFICIAL_KEYS_SHA256[(3, 1, 3)]


def test_official_nnunet_checkpoint_loads_strictly_through_create_model(tmp_path, model_2d):
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model_2d.state_dict().items()}
    # nnU-Net v2 saves the network under network_weights (a torch.compile'd one with an _orig_mod. prefix)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {f"_orig_mod.{k}": v for k, v in state.items()},
                "optimizer_state": {}, "current_epoch": 3, "init_args": {"fold": 0}}, path)
    loaded = zoo.create_model("lightm_unet_2d", checkpoint_path=path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    bad = tmp_path / "three_classes.pth"
    state["conv_final.2.1.conv.weight"] = torch.zeros(3, 32, 1, 1)
    torch.save({"network_weights": state}, bad)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        zoo.create_model("lightm_unet_2d", checkpoint_path=bad)


def _rvm_by_hand(layer: RVMLayer, x: torch.Tensor) -> torch.Tensor:
    """The official RVM layer's arithmetic: one LayerNorm used before and after Mamba(x) + s·x, then a Linear."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w).transpose(1, 2)
    out = layer.norm(layer.mamba(layer.norm(flat)) + layer.skip_scale * flat)
    return layer.proj(out).transpose(1, 2).reshape(b, -1, h, w)


def test_rvm_layer_and_model_structure(model_2d):
    torch.manual_seed(1)
    layer = model_2d.down_layers[1][0][0]
    assert isinstance(layer, RVMLayer) and (layer.input_dim, layer.output_dim) == (32, 64)
    assert isinstance(model_2d.down_layers[1][0][1], torch.nn.MaxPool2d)
    x = torch.randn(1, 32, 6, 4)
    with torch.no_grad():
        assert torch.allclose(layer(x), _rvm_by_hand(layer, x), atol=1e-6)
    # dt_rank = ceil(C / 16), d_state 16, expand 2 in every Mamba
    for m in model_2d.modules():
        if isinstance(m, RVMLayer):
            assert m.mamba.dt_rank == -(-m.input_dim // 16) and m.mamba.d_state == 16 and m.mamba.expand == 2


def test_forward_shapes_and_scan_impls_agree(model_2d):
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        out = model_2d(x)
        assert out.shape == (2, 2, 16, 24)
        set_scan_impl(model_2d, "sequential")
        ref = model_2d(x)
        set_scan_impl(model_2d, "auto")
    assert (out - ref).abs().max().item() <= 1e-5
    m3 = zoo.create_model("lightm_unet_3d", in_chans=1, num_classes=3).eval()
    with torch.no_grad():
        assert m3(torch.randn(1, 1, 8, 16, 8)).shape == (1, 3, 8, 16, 8)


def test_timm_contract_for_a_dense_model(model_2d):
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        feats = model_2d.forward_features(x)
        assert feats.shape == (1, model_2d.num_features, 16, 16) and model_2d.num_features == 32
        assert torch.equal(model_2d.forward_head(feats, pre_logits=True), feats)
        assert torch.allclose(model_2d.forward_head(feats), model_2d(x), atol=1e-6)
        stages = model_2d.forward_intermediates(x, intermediates_only=True)
        assert [tuple(s.shape[1:]) for s in stages] == [(32, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2)]
        final, inter = model_2d.forward_intermediates(x, indices=[1, 3])
        assert torch.allclose(final, feats, atol=1e-6) and len(inter) == 2
    assert model_2d.feature_info[2] == dict(num_chs=128, reduction=4, module="down_layers.2")
    assert {n.rsplit(".", 1)[-1] for n in model_2d.no_weight_decay()} == {"A_log", "D"}
    assert len(model_2d.no_weight_decay()) == 2 * 21  # 21 Mamba layers: 2 + 5 + 5 + 9 by stage
    m = LightMUNet(num_classes=2, blocks_down=(1, 1), blocks_up=(1,))
    m.reset_classifier(5)
    assert m.get_classifier()[2][1].conv.out_channels == 5 and m.num_classes == 5
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 5, 8, 8)


def test_features_only_backbone_drops_the_decoder():
    torch.manual_seed(0)
    enc = zoo.create_model("lightm_unet_2d", features_only=True, out_indices=(1, 2, 3))
    assert enc.feature_info.channels() == [64, 128, 256] and enc.feature_info.reduction() == [2, 4, 8]
    assert not any(k.startswith(("up_", "conv_final")) for k in enc.state_dict())
    with torch.no_grad():
        outs = enc(torch.randn(1, 3, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]


def test_grad_checkpointing_and_backward_run_through_the_chunked_scan():
    torch.manual_seed(0)
    m = LightMUNet(num_classes=2, blocks_down=(1, 1), blocks_up=(1,), init_filters=16)
    x = torch.randn(1, 3, 8, 8)
    m(x).square().mean().backward()
    g = m.down_layers[1][0][0].mamba.A_log.grad.clone()
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).square().mean().backward()
    assert torch.allclose(m.down_layers[1][0][0].mamba.A_log.grad, g, atol=1e-6)


def test_bad_inputs_raise_clear_errors(model_2d):
    with pytest.raises(InputShapeError, match=r"multiple of 8; got \(20, 16\), pad to e\.g\. \(24, 16\)"):
        model_2d(torch.randn(1, 3, 20, 16))
    with pytest.raises(InputShapeError, match=r"expects \(B, C, H, W\) with C=3"):
        model_2d(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        LightMUNet(spatial_dims=1)


def test_onnx_export_one_loop_per_mamba_layer_and_a_second_input_size(model_2d, tmp_path):
    """The whole 2D network through the TorchScript exporter with dynamic H/W (about 25 s of CPU at 32^2): one
    ONNX Loop per Mamba layer (21), and the same graph runs another input size in onnxruntime.

    The export at 256^2 with the timing and the node count is ``python benchmarks/mamba_scan.py --only onnx``."""
    import warnings

    import onnx
    import onnxruntime as ort

    path = tmp_path / "lightm_unet_2d.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        torch.onnx.export(model_2d, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    n_mamba = sum(isinstance(m, RVMLayer) for m in model_2d.modules())
    assert n_mamba == 21 and ops.count("Loop") == n_mamba and "Scan" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 32, 32), (2, 3, 24, 40)):  # the export size; another batch and a non-square size
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model_2d(x)
        got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        assert got.shape == ref.shape == (shape[0], 2, *shape[2:]) and ref.abs().max() > 0.3
        assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("dims", [2, 3])
def test_window_max_pool_is_the_pooling_op_in_inference_and_training(dims):
    """The encoder's 2x2(x2) max pool takes the maximum of its window views in inference: bit-identical to the
    pooling op, NaN included; with gradients, on odd maps and under the export switch the pooling op runs."""
    from timm.layers import set_layer_config

    from zoo.backbones.lightm_unet import WindowMaxPool2d, WindowMaxPool3d

    pool = (WindowMaxPool2d if dims == 2 else WindowMaxPool3d)(2, 2)
    reference = torch.nn.functional.max_pool2d if dims == 2 else torch.nn.functional.max_pool3d
    x = torch.randn(2, 3, *([6] * dims))
    x[0, 1, 2, 3] = float("nan")
    with torch.no_grad():
        assert torch.equal(pool(x).nan_to_num(7.0), reference(x, 2, 2).nan_to_num(7.0))
        odd = torch.randn(1, 2, *([5] * dims))
        assert torch.equal(pool(odd), reference(odd, 2, 2))
    ties = torch.zeros(1, 1, *([4] * dims), requires_grad=True)
    pool(ties).sum().backward()  # the pooling kernel's rule: one gradient per window, at its first position
    assert ties.grad.sum() == 2 ** dims and ties.grad.flatten()[0] == 1
    with set_layer_config(exportable=True), torch.no_grad():
        traced = torch.jit.trace(pool, x.nan_to_num(0.0))
    assert any("max_pool" in n.kind() for n in traced.graph.nodes())
