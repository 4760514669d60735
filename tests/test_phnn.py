"""PHC/PHM hypercomplex layers and the PHC ResNets: Kronecker construction, official counts and key layout, timm."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.backbones.phnn import checkpoint_filter_fn
from zoo.bench import count_macs, count_params
from zoo.errors import InputShapeError
from zoo.layers.hypercomplex import PHConv2d, PHMLinear, kron_weight

# ---------------------------------------------------------------- layers

def _block_matrix(A: torch.Tensor, Fm: torch.Tensor) -> torch.Tensor:
    """Explicit block matrix: block (r, s) of size (p, q) is sum_i A[i, r, s] * F[i] (kernel axes carried)."""
    n, p, q = A.shape[0], Fm.shape[1], Fm.shape[2]
    W = torch.zeros(n * p, n * q, *Fm.shape[3:])
    for r in range(n):
        for s in range(n):
            for i in range(n):
                W[r * p:(r + 1) * p, s * q:(s + 1) * q] += A[i, r, s] * Fm[i]
    return W


@pytest.mark.parametrize("n,p,q,k", [(4, 3, 2, ()), (3, 2, 5, (3, 3)), (2, 1, 1, (1, 2))])
def test_kron_weight_equals_explicit_block_matrix_and_torch_kron(n: int, p: int, q: int, k: tuple) -> None:
    A, Fm = torch.randn(n, n, n), torch.randn(n, p, q, *k)
    W = kron_weight(A, Fm)
    torch.testing.assert_close(W, _block_matrix(A, Fm))
    if not k:
        torch.testing.assert_close(W, sum(torch.kron(A[i], Fm[i]) for i in range(n)))


def test_hamilton_rule_as_A_gives_the_quaternion_weight_layout() -> None:
    # With A = the four Hamilton matrices, kron(A_i, F_i) builds the real matrix of quaternion multiplication
    # W = [[r, -i, -j, -k], [i, r, -k, j], [j, k, r, -i], [k, -j, i, r]] (blocks of F components r, i, j, k).
    A = torch.tensor([
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        [[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 0, -1], [0, 0, 1, 0]],
        [[0, 0, -1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, -1, 0, 0]],
        [[0, 0, 0, -1], [0, 0, -1, 0], [0, 1, 0, 0], [1, 0, 0, 0]],
    ], dtype=torch.float32)
    comp = torch.tensor([2.0, 3.0, 5.0, 7.0]).view(4, 1, 1)  # r, i, j, k as 1x1 blocks
    r, i, j, k = 2.0, 3.0, 5.0, 7.0
    expected = torch.tensor([[r, -i, -j, -k], [i, r, -k, j], [j, k, r, -i], [k, -j, i, r]])
    torch.testing.assert_close(kron_weight(A, comp), expected)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=2, padding=2),
                                dict(groups=3, padding="same")])
def test_phconv_with_n1_is_an_ordinary_convolution(kw: dict) -> None:
    ph = PHConv2d(6, 9, 3, n=1, bias=True, **kw)
    conv = nn.Conv2d(6, 9, 3, bias=True, **kw)
    with torch.no_grad():
        ph.A.fill_(1.0)
        ph.F.copy_(conv.weight.unsqueeze(0))
        ph.bias.copy_(conv.bias)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(ph(x), conv(x))


def test_phm_linear_with_n1_is_nn_linear_and_applies_its_bias() -> None:
    ph, lin = PHMLinear(6, 4, n=1), nn.Linear(6, 4)
    with torch.no_grad():
        ph.A.fill_(1.0)
        ph.F.copy_(lin.weight.unsqueeze(0))
        ph.bias.copy_(lin.bias)
    x = torch.randn(3, 6)
    torch.testing.assert_close(ph(x), lin(x))


def test_phconv_forward_is_conv_with_kron_weight_for_any_n_and_groups() -> None:
    ph = PHConv2d(12, 6, (3, 1), n=2, stride=(2, 1), padding=(1, 0), groups=3, bias=True)
    assert ph.composed_weight().shape == (6, 4, 3, 1) and ph.F is ph.weight and ph.weight.shape == (2, 3, 2, 3, 1)
    x = torch.randn(1, 12, 6, 5)
    ref = F.conv2d(x, _block_matrix(ph.A.detach(), ph.F.detach()), ph.bias, (2, 1), (1, 0), 1, 3)
    torch.testing.assert_close(ph(x), ref)


@pytest.mark.parametrize("cin,cout,k,n,groups,bias", [(64, 128, 3, 4, 1, False), (16, 8, 1, 2, 1, True),
                                                       (12, 24, 3, 3, 2, True), (8, 8, 5, 8, 1, False)])
def test_phconv_param_count_is_n3_plus_out_in_k2_over_n(cin: int, cout: int, k: int, n: int, groups: int,
                                                        bias: bool) -> None:
    m = PHConv2d(cin, cout, k, n, groups=groups, bias=bias)
    assert count_params(m) == n ** 3 + cout * (cin // groups) * k * k // n + (cout if bias else 0)


def test_phm_linear_param_count() -> None:
    assert count_params(PHMLinear(512, 1000, 4)) == 4 ** 3 + 512 * 1000 // 4 + 1000
    assert count_params(PHMLinear(12, 6, 3, bias=False)) == 27 + 24


def test_bad_n_or_channels_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"n=4 must divide in_channels/groups and out_channels .*in_channels/groups=6"
                                         r".*n values that work here: \[1, 2\]"):
        PHConv2d(6, 8, 3, n=4)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        PHConv2d(8, 8, 3, n=0)
    with pytest.raises(ValueError, match="n=3 must divide in_features and out_features"):
        PHMLinear(12, 10, n=3)
    with pytest.raises(InputShapeError, match="expects 8 input channels"):
        PHConv2d(8, 8, 3, n=4)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"n=3 must divide every channel width"):
        timm.create_model("phc_resnet18_cifar", n=3)
    with pytest.raises(ValueError, match="num_classes divisible by n=4.*phm_head=None"):
        timm.create_model("phc_resnet18", num_classes=10, phm_head=True)


def test_layers_follow_module_dtype_and_have_no_device_calls() -> None:
    # on the meta device any .cuda() call or tensor created on a fixed device inside forward would fail
    cases = ((PHConv2d(8, 8, 3, n=4, padding=1), torch.empty(2, 8, 4, 4)), (PHMLinear(8, 4, 2), torch.empty(2, 8)))
    for layer, x in cases:
        assert layer.to("meta")(x.to("meta")).device.type == "meta"
    m = PHConv2d(8, 8, 3, n=4, padding=1).double()
    assert m(torch.randn(1, 8, 4, 4, dtype=torch.float64)).dtype == torch.float64


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize("name,params", [("phc_resnet18_cifar", 2_805_962), ("phc_resnet50_cifar", 5_938_954),
                                         ("phc_resnet18", 2_932_456), ("phc_resnet50", 6_434_088)])
def test_phc_resnet_param_counts(name: str, params: int) -> None:
    assert count_params(timm.create_model(name)) == params


def test_cifar_counts_are_official_minus_the_unused_conv_biases() -> None:
    # official PHCResNet18 / PHCResNet50 (n=4, 4 input channels): 2,810,762 / 5,965,514 parameters, of which
    # every PHConv's bias (4,800 / 26,560) is allocated but never used by the official forward
    for name, official, unused in (("phc_resnet18_cifar", 2_810_762, 4_800), ("phc_resnet50_cifar", 5_965_514, 26_560)):
        m = timm.create_model(name)
        conv_bias = sum(mod.out_channels for mod in m.modules() if isinstance(mod, PHConv2d))
        assert conv_bias == unused
        assert count_params(m) + conv_bias == official


def test_imagenet_variants_are_about_one_nth_of_torchvision_resnets() -> None:
    for name, real in (("phc_resnet18", 11_689_512), ("phc_resnet50", 25_557_032)):
        ratio = count_params(timm.create_model(name)) / real
        assert 0.24 < ratio < 0.26


def test_phc_resnet18_cifar_macs() -> None:
    # inference: convolutions at 32x32 with the 4-channel (zero-padded) stem; the weights were composed at eval()
    assert count_macs(timm.create_model("phc_resnet18_cifar"), (3, 32, 32)) == 556_012_544
    # a forward that records gradients composes every weight from A and F too: n*n MACs per F entry
    from torch.utils.flop_counter import FlopCounterMode

    m = timm.create_model("phc_resnet18_cifar").eval()
    with FlopCounterMode(display=False) as counter:
        m(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() // 2 == 600_651_776


# Official PHCResNet18 (HyperNets image-classification/models/phc/phcresnet.py, n=4, channels=4, 10 classes):
# 162 state-dict entries; a sample of keys and shapes as the official code saves them.
OFFICIAL_R18_KEYS = {
    "conv1.bias": (64,), "conv1.A": (4, 4, 4), "conv1.F": (4, 16, 1, 3, 3),
    "layer1.0.conv1.F": (4, 16, 16, 3, 3), "layer2.0.conv1.F": (4, 32, 16, 3, 3),
    "layer2.0.shortcut.0.A": (4, 4, 4), "layer2.0.shortcut.0.F": (4, 32, 16, 1, 1),
    "layer2.0.shortcut.0.bias": (128,), "layer2.0.shortcut.1.running_var": (128,),
    "layer4.1.conv2.F": (4, 128, 128, 3, 3), "linear.weight": (10, 512), "linear.bias": (10,),
}


def _to_official_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our CIFAR state dict written the way the official code saves it (shortcut/linear names, PH factor ``F``
    instead of our ``weight``, PHConv biases)."""
    ph = {name: mod for name, mod in model.named_modules() if isinstance(mod, PHConv2d)}
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(".weight") and k[:-len(".weight")] in ph:
            k = k[:-len(".weight")] + ".F"
        k = k.replace(".downsample.", ".shortcut.")
        sd["linear." + k[3:] if k.startswith("fc.") else k] = v
    for name, mod in ph.items():
        sd[name.replace(".downsample.", ".shortcut.") + ".bias"] = torch.randn(mod.out_channels) * 10
    return sd


def test_official_key_layout_round_trips_through_an_official_pth(tmp_path) -> None:
    ours = timm.create_model("phc_resnet18_cifar").eval()
    with torch.no_grad():
        for mod in ours.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    off = _to_official_layout(ours)
    assert len(off) == 162
    assert {k: tuple(off[k].shape) for k in OFFICIAL_R18_KEYS} == OFFICIAL_R18_KEYS
    assert sum(v.numel() for k, v in off.items() if "running" not in k and "num_batches" not in k) == 2_810_762
    torch.save(off, tmp_path / "phcresnet18.pth")
    loaded = zoo.create_model("phc_resnet18_cifar", checkpoint_path=tmp_path / "phcresnet18.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    # the large random conv biases in the file are discarded (the official forward ignores them)
    torch.testing.assert_close(loaded(x), ours(x))
    assert checkpoint_filter_fn(ours.state_dict(), ours).keys() == ours.state_dict().keys()


def test_phc_resnet50_cifar_official_layout_has_the_official_keys_and_count() -> None:
    # official PHCResNet50(channels=4, n=4): 426 state-dict entries, 5,965,514 parameters
    off = _to_official_layout(timm.create_model("phc_resnet50_cifar"))
    assert len(off) == 426
    assert sum(v.numel() for k, v in off.items() if "running" not in k and "num_batches" not in k) == 5_965_514
    shapes = {"layer1.0.conv3.F": (4, 64, 16, 1, 1), "layer1.0.shortcut.0.F": (4, 64, 16, 1, 1),
              "layer4.2.conv3.F": (4, 512, 128, 1, 1), "linear.weight": (10, 2048)}
    assert {k: tuple(off[k].shape) for k in shapes} == shapes


def test_zero_channel_goes_in_front_like_the_official_pipeline() -> None:
    rgb = timm.create_model("phc_resnet18_cifar").eval()
    quat = timm.create_model("phc_resnet18_cifar", in_chans=4).eval()
    quat.load_state_dict(rgb.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(rgb(x), quat(F.pad(x, (0, 0, 0, 0, 1, 0))))
    with pytest.raises(InputShapeError, match=r"\(B, 3, H, W\)"):
        rgb(torch.randn(1, 4, 32, 32))


def test_cifar_timm_contract() -> None:
    x = torch.randn(2, 3, 32, 32)
    feats = timm.create_model("phc_resnet18_cifar", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    assert feats.feature_info.channels() == [64, 128, 256, 512]
    assert [tuple(o.shape) for o in feats(x)] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
    m = timm.create_model("phc_resnet18_cifar").eval()
    assert isinstance(m.get_classifier(), nn.Linear)  # official: a real linear classifier
    final, inter = m.forward_intermediates(x, indices=[0, 4])
    assert [o.shape[1] for o in inter] == [64, 512]
    torch.testing.assert_close(final, inter[1])
    assert m.forward_head(final, pre_logits=True).shape == (2, 512)
    m.reset_classifier(100)
    assert m(x).shape == (2, 100)


def test_imagenet_variant_contract_and_phm_head() -> None:
    m = timm.create_model("phc_resnet18", num_classes=8).eval()
    assert isinstance(m.fc, PHMLinear) and isinstance(m.conv1, PHConv2d) and m.conv1.kernel_size == (7, 7)
    x = torch.randn(1, 3, 64, 64)
    out, inter = m.forward_intermediates(x)
    assert [tuple(o.shape[1:]) for o in inter] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert m.forward_head(out).shape == (1, 8)
    m.reset_classifier(0)
    assert m(x).shape == (1, 512)
    m2 = timm.create_model("phc_resnet18", num_classes=10, phm_head=False)
    assert isinstance(m2.fc, nn.Linear)


@pytest.mark.parametrize("name", ["phc_resnet18", "phc_resnet50"])
def test_phc_resnet_takes_any_num_classes_with_a_phm_head_when_n_divides_it(name: str) -> None:
    """PHM needs n | num_classes: the default builds it then (the paper's 1000 classes, param counts above) and a
    real linear classifier otherwise; reset_classifier follows the same rule."""
    x = torch.randn(2, 3, 32, 32)
    ten = zoo.create_model(name, num_classes=10).eval()
    assert type(ten.fc) is nn.Linear and ten(x).shape == (2, 10)
    twelve = timm.create_model(name, num_classes=12).eval()
    assert isinstance(twelve.fc, PHMLinear) and twelve(x).shape == (2, 12)
    twelve.reset_classifier(42)
    assert type(twelve.fc) is nn.Linear and twelve(x).shape == (2, 42)
    twelve.reset_classifier(8)
    assert isinstance(twelve.fc, PHMLinear) and twelve(x).shape == (2, 8)
    assert isinstance(timm.create_model(name, num_classes=12, phm_head=False).fc, nn.Linear)


def test_reset_classifier_without_pool_gives_the_unpooled_map_on_the_models_device_and_dtype() -> None:
    m = timm.create_model("phc_resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    m.reset_classifier(0, "")
    assert m(x).shape == (1, 512, 2, 2)
    torch.testing.assert_close(m(x), m.forward_features(x))
    m.to(torch.float64).reset_classifier(8)
    assert m.fc.A.dtype == torch.float64 and not m.fc.training


def test_eval_composes_the_ph_weights_once_and_never_serves_a_stale_one() -> None:
    layer = PHConv2d(8, 8, 3, n=4, padding=1)
    x = torch.randn(1, 8, 5, 5)
    ref = F.conv2d(x, layer.composed_weight(), layer.bias, padding=1)
    assert layer._cache is None  # training: composed in every forward, gradients reach A and F
    layer(x).sum().backward()
    assert layer.A.grad is not None and layer.F.grad is not None
    layer.eval()
    cached = layer._cache[0]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=0, atol=0)
        assert layer._forward_weight() is cached  # no composition per forward
        layer.A.mul_(2.0)  # an in-place edit: the cache is stale and is not used
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.composed_weight(), layer.bias, padding=1))
    layer.load_state_dict({k: v * 3 for k, v in layer.state_dict().items()})
    with torch.no_grad():
        assert layer._forward_weight() is layer._cache[0]
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.composed_weight(), layer.bias, padding=1))
    layer.double()
    with torch.no_grad():
        assert layer(x.double()).dtype == torch.float64
    copy = __import__("copy").deepcopy(layer)
    with torch.no_grad():
        copy.A.add_(1.0)
        torch.testing.assert_close(copy(x.double()), F.conv2d(x.double(), copy.composed_weight(), copy.bias, padding=1))
    assert layer.train()._cache is None


def test_zoo_info_reports_phnn_models() -> None:
    from zoo.info import model_info

    info = model_info("phc_resnet18_cifar")
    assert info["params"] == 2_805_962 and info["input_size"] == (3, 32, 32) and info["num_classes"] == 10
    assert info["family"] == "phnn" and info["macs"] == 556_012_544


def test_materialized_model_computes_the_same_with_real_layers() -> None:
    from zoo.layers.hypercomplex import materialize_ph_layers

    m = timm.create_model("phc_resnet18", num_classes=8).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = m(x)
    materialize_ph_layers(m)
    assert not any(isinstance(mod, (PHConv2d, PHMLinear)) for mod in m.modules())
    assert isinstance(m.conv1, nn.Conv2d) and m.conv1.weight.shape == (64, 4, 7, 7)
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)


def test_zero_init_last_marks_the_branch_norm_and_the_export_probe_halves_it() -> None:
    """The probe (export.probe) halves the last BN gain of every residual branch, which keeps the random
    phc_resnet50 out of the chaotic regime where float32 drifts 2e-4 at the logits; the other norms stay at 1."""
    from zoo.export.probe import RESIDUAL_GAIN, make_informative

    basic = zoo.create_model("phc_resnet18_cifar").layer1[0]
    basic.zero_init_last()
    assert torch.all(basic.bn2.weight == 0) and torch.all(basic.bn1.weight == 1)
    model = zoo.create_model("phc_resnet50", num_classes=8)
    make_informative(model, (3, 32, 32))
    assert RESIDUAL_GAIN == 0.5
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == (0.5 if name.endswith("bn3") else 1.0)), name
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    make_informative(plain, (3, 8, 8))
    assert torch.all(plain[1].weight == 1)
