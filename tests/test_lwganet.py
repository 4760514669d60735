"""LWGANet (zoo/backbones/lwganet.py): sizes, official key layout, numerics of its pieces, timm contract, export."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn.functional as F
from timm.layers import set_exportable

import zoo
from zoo.backbones.lwganet import (
    DRFD,
    MODEL_ARGS,
    EvalBatchNorm2d,
    LWGANet,
    MediumRangeAttention,
    MultiHeadSelfAttention,
    PointwiseConv2d,
    SelectiveGlobalAttention,
    SparseGlobalAttention,
    add_max_unpool_2x2,
    checkpoint_filter_fn,
    max_pool_2x2,
    max_pool_2x2_with_mask,
    max_unpool_2x2,
    max_unpool_2x2_masked,
    mul_nearest_upsampled,
    official_key_to_ours,
    shear_cols,
    shear_rows,
    unshear_cols,
    unshear_rows,
)
from zoo.bench import count_macs, count_params
from zoo.errors import CheckpointError, InputShapeError
from zoo.layers.blurpool import BlurPool2dAsym

SMALL = 96  # smallest input LWGANet accepts


@pytest.fixture(scope="module")
def l0() -> torch.nn.Module:
    torch.manual_seed(0)
    m = zoo.create_model("lwganet_l0", num_classes=45).eval()
    _randomise_norms(m)
    return m


def _randomise_norms(model: torch.nn.Module, seed: int = 3) -> None:
    """Move BN statistics and affine terms off their init so numeric comparisons are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.add_(0.3 * torch.rand(m.running_var.shape, generator=g))


# --------------------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("name,classes,expected", [
    ("lwganet_l0", 1000, 2_940_778), ("lwganet_l1", 1000, 7_130_330), ("lwganet_l2", 1000, 14_264_022),
    ("lwganet_l0", 45, 1_717_423), ("lwganet_l1", 45, 5_906_975), ("lwganet_l2", 45, 13_040_667),
])
def test_lwganet_param_count_matches_official(name: str, classes: int, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no time spent initialising weights
        m = zoo.create_model(name, num_classes=classes)
    assert count_params(m) == expected


def test_lwganet_default_is_1000_classes() -> None:
    assert zoo.create_model("lwganet_l0").num_classes == 1000


# zoo.bench.count_macs (FlopCounterMode: convolutions and matrix products) on the official code, commit d46a47d,
# 224x224, 45 classes: ours equals it exactly.
OFFICIAL_CONV_MATMUL_MACS = {"lwganet_l0": 182_193_120, "lwganet_l1": 701_130_336, "lwganet_l2": 1_856_347_520}
# ptflops 0.7.5 module hooks (count_functional=False) on the official code, same setting; the published 0.186 /
# 0.709 / 1.870 G are these (with ptflops' default count_functional=True L0 reads 188.3 M, 1.2% above the paper).
OFFICIAL_PTFLOPS_MACS = {"lwganet_l0": 186_553_933, "lwganet_l1": 709_848_285, "lwganet_l2": 1_873_259_165}
PAPER_GMACS = {"lwganet_l0": 0.186, "lwganet_l1": 0.709, "lwganet_l2": 1.870}


def _ptflops_equivalent_macs(model: torch.nn.Module) -> tuple[int, int]:
    """(conv+matmul MACs, what ptflops' module hooks report on the official model), from one meta forward pass.

    ptflops counts, per official module: Conv2d and Linear MACs plus one per bias element of the output;
    BatchNorm2d 2 per input element (affine); GELU/ReLU 1 per output element; MaxPool2d and AdaptiveAvgPool2d 1
    per input element. It does not see functional calls: the blur pool's ``F.conv2d`` and the attention's
    ``q @ k.T`` / ``attn @ v`` are not counted, so they are taken off the exact conv+matmul count here.
    """
    extra = [0]

    def add(fn):
        return lambda mod, inp, out: extra.__setitem__(0, extra[0] + fn(mod, inp, out))

    hooks = []
    for m in model.modules():
        fn = None
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
            fn = lambda mod, inp, out: out.numel()  # noqa: E731
        elif isinstance(m, torch.nn.BatchNorm2d):
            fn = lambda mod, inp, out: 2 * inp[0].numel()  # noqa: E731
        elif type(m).__name__ in ("GELU", "ReLU"):
            fn = lambda mod, inp, out: out.numel()  # noqa: E731
        elif isinstance(m, (MediumRangeAttention, SelectiveGlobalAttention, SparseGlobalAttention)):
            # official MaxPool2d modules: MRA's 3x3/1 pool and the 2x2 pool of the stage 1-3 global branch;
            # MRA's blur conv (16 MACs per output element) is functional there
            fn = lambda mod, inp, out: inp[0].numel() - (  # noqa: E731
                16 * inp[0].shape[1] * -(-inp[0].shape[2] // 3) * -(-inp[0].shape[3] // 3)
                if isinstance(mod, MediumRangeAttention) else 0)
        elif isinstance(m, DRFD):  # its 3x3/2 MaxPool2d reads the output of the first depthwise conv
            fn = lambda mod, inp, out: 2 * inp[0].numel()  # noqa: E731
        elif isinstance(m, MultiHeadSelfAttention):  # the two functional attention products, per output token
            fn = lambda mod, inp, out: -2 * mod.attn_dim * (inp[0].shape[2] * inp[0].shape[3]) ** 2  # noqa: E731
        elif m is getattr(model, "global_pool", None):
            fn = lambda mod, inp, out: inp[0].numel()  # noqa: E731
        if fn is not None:
            hooks.append(m.register_forward_hook(add(fn)))
    try:
        macs = count_macs(model, (3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    return macs, macs + extra[0]


@pytest.mark.parametrize("name", ["lwganet_l0", "lwganet_l1", "lwganet_l2"])
def test_lwganet_macs_equal_official_counts_and_paper(name: str) -> None:
    # shapes only (meta tensors); the class itself, since create_model's input check reads values
    with torch.device("meta"):
        m = LWGANet(num_classes=45, **MODEL_ARGS[name])
        macs, ptflops_macs = _ptflops_equivalent_macs(m)
    assert macs == OFFICIAL_CONV_MATMUL_MACS[name]
    assert ptflops_macs == OFFICIAL_PTFLOPS_MACS[name]
    assert abs(ptflops_macs / 1e9 - PAPER_GMACS[name]) / PAPER_GMACS[name] < 0.01
    assert abs(macs / 1e9 - PAPER_GMACS[name]) / PAPER_GMACS[name] < 0.021  # conv+matmul alone: 0.7-2.0% below


# --------------------------------------------------------------------------------------------- official keys

# (official key, shape) for LWGANet-L0 at 1000 classes, read from the official model's state_dict
OFFICIAL_L0_KEYS = {
    "Stem.proj.weight": (32, 3, 4, 4),
    "Stem.norm.running_var": (32,),
    "stages.0.blocks.0.mlp.0.weight": (64, 32, 1, 1),
    "stages.0.blocks.0.mlp.1.bias": (64,),
    "stages.0.blocks.0.mlp.3.weight": (32, 64, 1, 1),
    "stages.0.blocks.0.PA.p_conv.0.weight": (32, 8, 1, 1),
    "stages.0.blocks.0.PA.p_conv.1.running_mean": (32,),
    "stages.0.blocks.0.PA.p_conv.3.weight": (8, 32, 1, 1),
    "stages.0.blocks.0.LA.conv.0.weight": (8, 8, 3, 3),
    "stages.0.blocks.0.LA.conv.1.weight": (8,),
    "stages.0.blocks.0.MRA.max_m2.filt": (8, 1, 4, 4),
    "stages.0.blocks.0.MRA.H_att1.weight": (8, 1, 11, 3),
    "stages.0.blocks.0.MRA.V_att1.weight": (8, 1, 3, 11),
    "stages.0.blocks.0.MRA.H_att2.weight": (8, 1, 11, 3),
    "stages.0.blocks.0.MRA.V_att2.weight": (8, 1, 3, 11),
    "stages.0.blocks.0.MRA.norm.bias": (8,),
    "stages.0.blocks.0.GA12.proj_1.weight": (8, 8, 1, 1),
    "stages.0.blocks.0.GA12.conv_spatial.weight": (8, 1, 7, 7),
    "stages.0.blocks.0.GA12.conv_squeeze.weight": (2, 2, 7, 7),
    "stages.0.blocks.0.GA12.conv.weight": (8, 4, 1, 1),
    "stages.0.blocks.0.norm.weight": (8,),
    "stages.0.blocks.0.norm1.running_mean": (32,),
    "stages.1.conv.weight": (64, 1, 3, 3),
    "stages.1.conv_c.bias": (64,),
    "stages.1.norm_c.weight": (64,),
    "stages.1.norm_m.running_var": (64,),
    "stages.1.fusion.weight": (64, 128, 1, 1),
    "stages.2.blocks.1.MRA.max_m2.filt": (16, 1, 4, 4),
    "stages.3.fusion.weight": (128, 256, 1, 1),
    "stages.4.blocks.0.GA3.norm.weight": (32,),
    "stages.4.blocks.3.GA3.attn.qkv.weight": (96, 32),
    "stages.4.blocks.0.GA3.attn.proj.weight": (32, 32),
    "stages.5.fusion.bias": (256,),
    "stages.6.blocks.1.GA4.qkv.weight": (192, 64),
    "stages.6.blocks.0.GA4.proj.weight": (64, 64),
    "stages.6.blocks.0.norm.running_var": (64,),
    "stages.6.blocks.1.norm1.weight": (256,),
    "avgpool_pre_head.1.weight": (1280, 256, 1, 1),
    "head.weight": (1000, 1280),
    "head.bias": (1000,),
}
OFFICIAL_L0_NUM_KEYS = 477  # len(official_model.state_dict()), num_batches_tracked included


def to_official_key(key: str) -> str:
    """Inverse of the filter, written independently here so the test pins the official layout from both sides."""
    fixed = [("stem.conv.", "Stem.proj."), ("stem.norm.", "Stem.norm."), ("conv_head.", "avgpool_pre_head.1."),
             ("classifier.", "head.")]
    for new, old in fixed:
        if key.startswith(new):
            return old + key[len(new):]
    m = re.match(r"stages\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"stages.{2 * int(m[1]) - 1}.{m[2]}"
    m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
    assert m, key
    stage, rest = int(m[1]), m[3]
    subs = [("mlp.fc1.", "mlp.0."), ("mlp.norm.", "mlp.1."), ("mlp.fc2.", "mlp.3."),
            ("point_attn.mlp.fc1.", "PA.p_conv.0."), ("point_attn.mlp.norm.", "PA.p_conv.1."),
            ("point_attn.mlp.fc2.", "PA.p_conv.3."), ("local_attn.conv.", "LA.conv.0."),
            ("local_attn.norm.", "LA.conv.1."), ("medium_attn.blur.", "MRA.max_m2."),
            ("medium_attn.h_strip.", "MRA.H_att1."), ("medium_attn.v_strip.", "MRA.V_att1."),
            ("medium_attn.h_strip_sheared.", "MRA.H_att2."), ("medium_attn.v_strip_sheared.", "MRA.V_att2."),
            ("medium_attn.norm.", "MRA.norm."), ("mlp_norm.", "norm1.")]
    if stage < 2:
        subs += [("global_attn.attn.", "GA12."), ("global_attn.norm.", "norm.")]
    elif stage == 2:
        subs += [("global_attn.", "GA3.")]
    else:
        subs += [("global_attn.attn.", "GA4."), ("global_attn.norm.", "norm.")]
    for new, old in subs:
        if rest.startswith(new):
            rest = old + rest[len(new):]
            break
    return f"stages.{2 * stage}.blocks.{m[2]}.{rest}"


def test_lwganet_official_key_layout_maps_onto_ours() -> None:
    ours = zoo.create_model("lwganet_l0").state_dict()
    assert len(ours) == OFFICIAL_L0_NUM_KEYS
    for key, shape in OFFICIAL_L0_KEYS.items():
        mapped = official_key_to_ours(key)
        assert mapped in ours, (key, mapped)
        assert tuple(ours[mapped].shape) == shape, key
    official = {to_official_key(k) for k in ours}
    assert set(OFFICIAL_L0_KEYS) <= official
    assert {official_key_to_ours(k) for k in official} == set(ours)


def test_lwganet_blur_filter_is_the_reference_binomial() -> None:
    filt = zoo.create_model("lwganet_l0").state_dict()["stages.0.blocks.0.medium_attn.blur.filt"]
    a = torch.tensor([1.0, 3.0, 3.0, 1.0])
    expected = (a[:, None] * a[None, :] / 64).expand(8, 1, 4, 4)
    assert torch.equal(filt, expected)


def test_lwganet_official_checkpoint_round_trip(tmp_path, l0) -> None:
    """A ``{'model': official_state_dict}`` .pth loads strictly and reproduces the logits."""
    official = {to_official_key(k): v.clone() for k, v in l0.state_dict().items()}
    path = tmp_path / "LWGANet_L0_nwpu.pth"
    torch.save({"model": official, "epoch": 299}, path)
    loaded = zoo.create_model("lwganet_l0", num_classes=45, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, SMALL, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), l0(x))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        zoo.create_model("lwganet_l0", num_classes=1000, checkpoint_path=str(path))


def test_lwganet_filter_passes_our_own_layout(l0) -> None:
    sd = l0.state_dict()
    assert checkpoint_filter_fn(sd, l0).keys() == sd.keys()


# --------------------------------------------------------------------------------------------- pieces

def test_maxpool_unpool_equals_torch_including_ties() -> None:
    x = torch.randn(2, 3, 6, 8)
    x[0, 0] = 1.0  # a flat map: every window is a 4-way tie
    x[1, 1, :2, :2] = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # tie between three positions
    pooled, mask = max_pool_2x2_with_mask(x)
    ref, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(pooled, ref)
    y = torch.randn_like(pooled)
    assert torch.equal(max_unpool_2x2_masked(y, mask), F.max_unpool2d(y, idx, 2, 2))
    assert torch.equal(max_unpool_2x2(y, idx), F.max_unpool2d(y, idx, 2, 2))


def test_shear_is_a_diagonal_shift_and_inverts() -> None:
    x = torch.arange(1.0, 13.0).reshape(1, 1, 3, 4)
    s = shear_rows(x)
    assert s.shape == (1, 1, 3, 6)
    assert s[0, 0].tolist() == [[1, 2, 3, 4, 0, 0], [0, 5, 6, 7, 8, 0], [0, 0, 9, 10, 11, 12]]
    assert torch.equal(unshear_rows(s, 4), x)
    tall = torch.randn(1, 2, 7, 3)  # more rows than columns: the official shear would wrap rows around
    assert torch.equal(unshear_rows(shear_rows(tall), 3), tall)


def test_column_shear_is_the_transposed_row_shear_and_inverts() -> None:
    x = torch.randn(2, 3, 4, 6)
    s = shear_cols(x)
    assert s.shape == (2, 3, 9, 6) and s.is_contiguous()
    assert torch.equal(s, shear_rows(x.transpose(-1, -2)).transpose(-1, -2))
    assert torch.equal(unshear_cols(s, 4), x)
    assert torch.equal(unshear_rows(shear_rows(x), 6), x)


def test_eager_fast_paths_equal_the_plain_ops_bit_for_bit() -> None:
    """The eager shortcuts (strided shears, scatter-add unpooling, repeated gate) must not change a single bit,
    ties included: a different window maximum would move values by O(1) downstream."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 10, 12, generator=g)
    x[0, 0] = 0.5  # flat map: every 2x2 window ties
    x[1, 2, :2, :2] = torch.tensor([[0.0, 3.0], [3.0, 3.0]])
    pooled, where = max_pool_2x2(x)
    ref_pooled, ref_idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(pooled, ref_pooled) and torch.equal(where, ref_idx)
    y = torch.randn(pooled.shape, generator=g)
    assert torch.equal(add_max_unpool_2x2(x, y, where), x + F.max_unpool2d(y, ref_idx, 2, 2))
    for H, W in ((56, 56), (28, 20), (14, 14), (7, 9), (40, 40)):
        small = torch.rand(1, 3, -(-H // 3), -(-W // 3), generator=g)
        big = torch.randn(1, 3, H, W, generator=g)
        assert torch.equal(mul_nearest_upsampled(big, small),
                           big * F.interpolate(small, size=(H, W), mode="nearest")), (H, W)


def test_pointwise_conv_uses_the_product_only_where_it_is_bit_identical(monkeypatch) -> None:
    """Inference 1x1 convs run as ``mm`` only for configurations where the first call proved it equal to conv2d
    bit for bit (the answer is kept on the layer itself); a configuration where it is not keeps conv2d, and
    training always sees conv2d."""
    torch.manual_seed(0)
    conv = PointwiseConv2d(16, 24).eval()
    x = torch.randn(1, 16, 10, 6)
    with torch.inference_mode():
        first, second = conv(x), conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert list(conv.gemm_equals_conv.values()) == [True]  # one thread (conftest): the same GEMM as the conv
    other = PointwiseConv2d(16, 24).eval()
    assert other.gemm_equals_conv == {}  # per layer: no state shared between layers or models
    # a product that rounds differently is detected and never used for that configuration
    conv.gemm_equals_conv.clear()
    monkeypatch.setattr(PointwiseConv2d, "_gemm", lambda self, t: F.conv2d(t, self.weight, self.bias) + 1e-7)
    with torch.inference_mode():
        assert torch.equal(conv(x), ref) and torch.equal(conv(x), ref)
    assert list(conv.gemm_equals_conv.values()) == [False]
    # where rounding is free (stage 4, head) the product is used without the check
    conv.bit_exact = False
    with torch.inference_mode():
        assert not torch.equal(conv(x), ref)
    conv.train()
    assert torch.equal(conv(x), ref)  # grad enabled: always the convolution
    m = zoo.create_model("lwganet_l0")
    exact = {".".join(n.split(".")[:4]) if n.startswith("stages.2.blocks") else
             n.split(".")[1] if n.startswith("stages") else n: c.bit_exact
             for n, c in m.named_modules() if isinstance(c, PointwiseConv2d)}
    # the last stage-3 block pools its input before any of its convolutions: the rest of it is free too
    assert exact == {"0": True, "1": True, "stages.2.blocks.0": True, "stages.2.blocks.1": True,
                     "stages.2.blocks.2": True, "stages.2.blocks.3": False, "2": True, "3": False,
                     "conv_head": False}
    # stage 4's DRFD runs its 1 -> 2 grouped conv as a depthwise conv on repeated channels: equal within rounding
    assert [s.downsample.bit_exact for s in m.stages[1:]] == [True, True, False]
    drfd = m.stages[3].downsample.eval()
    _randomise_norms(drfd)
    x = torch.randn(1, 128, 14, 14)
    with torch.inference_mode():
        fast = drfd(x)
        drfd.bit_exact = True
        torch.testing.assert_close(fast, drfd(x), atol=1e-5, rtol=0)


def test_medium_range_channels_last_strips_equal_the_plain_ops_bit_for_bit() -> None:
    """The MRA strips run on a channels-last copy of the blurred map (faster oneDNN kernel); the gate must keep
    every bit of the plain NCHW computation (official order of sums, F.interpolate), at one and two threads."""
    import zoo.backbones.lwganet as L

    threads = torch.get_num_threads()
    try:
        for th in (1, 2):
            torch.set_num_threads(th)
            torch.manual_seed(th)
            for C, H, W in ((8, 56, 56), (24, 28, 20), (48, 14, 14)):
                mra = MediumRangeAttention(C, 11, torch.nn.BatchNorm2d).eval()
                _randomise_norms(mra)
                x = torch.randn(1, C, H, W)
                with torch.inference_mode():
                    got = mra(x)
                    t = mra.blur(F.max_pool2d(x, 3, 1, 1))
                    h, w = t.shape[-2:]
                    att = (mra.h_strip(t) + mra.v_strip(t)
                           + L.unshear_rows(mra.h_strip_sheared(L.shear_rows(t)), w)
                           + L.unshear_cols(mra.v_strip_sheared(L.shear_cols(t)), h))
                    ref = x * F.interpolate(torch.sigmoid(mra.norm(att)), size=(H, W), mode="nearest")
                assert torch.equal(got, ref) and got.is_contiguous(), (th, C, H, W)
    finally:
        torch.set_num_threads(threads)


def test_eval_batchnorm_is_the_module_bit_for_bit_and_still_trains() -> None:
    torch.manual_seed(0)
    ref, fast = torch.nn.BatchNorm2d(8), EvalBatchNorm2d(8)
    _randomise_norms(ref)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 7)
    with torch.inference_mode():
        assert torch.equal(fast.eval()(x), ref.eval()(x))
    fast.train()(x)  # training: batch statistics, running stats updated as by the parent class
    ref.train()(x)
    assert torch.equal(fast.running_mean, ref.running_mean) and int(fast.num_batches_tracked) == 1


def test_stage4_medium_range_linear_form_equals_the_convolutions() -> None:
    """Stage 4's MRA runs blur + strip convs as one composed matrix (no max-pool/unpool follows, so its ~1e-7
    rounding is harmless); it must equal the convolutional form, also on rectangular and odd maps."""
    torch.manual_seed(0)
    for C, H, W in ((64, 7, 7), (8, 12, 9), (4, 3, 5)):
        mra = MediumRangeAttention(C, 11, torch.nn.BatchNorm2d).eval()
        _randomise_norms(mra)
        x = torch.randn(2, C, H, W)
        with torch.no_grad():
            conv_form = mra(x)
            mra.linear_form = True
            linear_form = mra(x)
        torch.testing.assert_close(linear_form, conv_form, atol=2e-6, rtol=0)
        assert not torch.equal(linear_form, torch.zeros_like(linear_form))
    blocks = zoo.create_model("lwganet_l0").stages
    assert [b.medium_attn.linear_form for s in blocks for b in s.blocks] == [False] * 7 + [True] * 2
    # the cached operators, first built under inference_mode, must still serve training
    mra = MediumRangeAttention(4, 11, torch.nn.BatchNorm2d, linear_form=True)
    with torch.inference_mode():
        mra(torch.randn(1, 4, 9, 9))
    mra(torch.randn(1, 4, 9, 9)).sum().backward()
    assert mra.h_strip_sheared.weight.grad.abs().sum() > 0


def test_shear_matches_official_on_square_maps() -> None:
    # official h_transform pads by W and re-reads rows of 2W - 1
    x = torch.randn(1, 2, 5, 5)
    B, C, H, W = x.shape
    ref = F.pad(x, (0, W)).reshape(B, C, -1)[..., :-W].reshape(B, C, H, 2 * W - 1)
    assert torch.equal(shear_rows(x), ref)


def test_blurpool_pads_one_before_two_after() -> None:
    x = torch.randn(1, 1, 7, 7)
    bp = BlurPool2dAsym(1, filt_size=4, stride=3)
    ref = F.conv2d(F.pad(x, (1, 2, 1, 2), mode="reflect"), bp.filt, stride=3)
    assert torch.equal(bp(x), ref)
    assert bp(x).shape[-2:] == (3, 3)  # ceil(7 / 3)


def _deterministic_weights(model: torch.nn.Module) -> None:
    """Fill every tensor from a formula of its position, so the official code can be fed the very same numbers."""
    with torch.no_grad():
        for i, (k, t) in enumerate(model.state_dict().items()):
            if not t.is_floating_point() or k.endswith(".filt"):
                continue
            wave = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.37 + i).reshape(t.shape)
            if k.endswith("running_var"):
                t.copy_(1.0 + 0.5 * wave.abs())
            elif k.endswith(("norm.weight", "mlp_norm.weight")):
                t.copy_(1.0 + 0.2 * wave)
            elif t.ndim > 1:  # conv / linear weights: unit-gain scale so activations neither vanish nor explode
                t.copy_(wave * (t.shape[0] / t.numel()) ** 0.5)
            else:
                t.copy_(0.1 * wave)


def _deterministic_input(h: int, w: int) -> torch.Tensor:
    n = torch.arange(3 * h * w, dtype=torch.float64)
    return 2.0 * torch.sin(n * 1.7 + n * n * 1e-4).reshape(1, 3, h, w).float()


# Reference numbers from the official LWGANet-L0 (commit d46a47d, 45 classes), fed the same tensors as
# _deterministic_weights gives ours (mapped back with to_official_key). Per input: the stage outputs
# (official Stem + stages[0], [:3], [:5], [:7]) at [0, :3, 1, 1:3], then logits[:6]. The all-zero input makes every
# 2x2 max-pool window a tie, which pins the unpooling position.
OFFICIAL_L0_REFERENCE = {
    "pattern": [
        -0.257695, 0.492516, 0.042658, -0.113835, 0.543651, -0.329525, -0.327414, -0.314112,
        0.418458, 0.403700, -0.365561, -0.350468, 0.178994, 0.212386, 0.905833, 0.975892,
        1.451663, 1.546664, -0.906368, -0.799602, 0.803291, 0.913663, 1.770064, 1.792855,
        -0.203061, -0.074611, 0.008899, -0.169605, 0.100531, 0.012914,
    ],
    "zeros": [
        0.131265, 0.131265, -0.002318, -0.002318, 0.124018, 0.124018, -0.233642, -0.234070,
        0.339287, 0.340072, -0.304574, -0.305568, 0.196605, 0.233183, 0.932420, 1.019061,
        1.482056, 1.603752, -0.916692, -0.809284, 0.796287, 0.910935, 1.772161, 1.799330,
        -0.203086, -0.074573, 0.008870, -0.169602, 0.100555, 0.012876,
    ],
}


def _l0_reference_numbers(m: torch.nn.Module, x: torch.Tensor) -> list[float]:
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        out = [v for t in inter for v in t[0, :3, 1, 1:3].flatten().tolist()]
        return out + m.forward_head(final)[0, :6].tolist()


def test_lwganet_l0_equals_official_reference_numbers() -> None:
    m = zoo.create_model("lwganet_l0", num_classes=45).eval()
    _deterministic_weights(m)
    for key, x in (("pattern", _deterministic_input(96, 96)), ("zeros", torch.zeros(1, 3, 96, 96))):
        got = torch.tensor(_l0_reference_numbers(m, x))
        assert torch.allclose(got, torch.tensor(OFFICIAL_L0_REFERENCE[key]), atol=1e-4), key


# --------------------------------------------------------------------------------------------- timm contract

def test_lwganet_features_only_widths_and_reductions() -> None:
    m = zoo.create_model("lwganet_l0", features_only=True).eval()
    assert m.feature_info.channels() == [32, 64, 128, 256]
    assert m.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = m(torch.randn(1, 3, 128, SMALL))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 32, 24), (1, 64, 16, 12), (1, 128, 8, 6), (1, 256, 4, 3)]


def test_lwganet_forward_intermediates_and_head(l0) -> None:
    x = torch.randn(1, 3, SMALL, SMALL)
    with torch.no_grad():
        final, inter = l0.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [32, 64, 128, 256]
        assert torch.equal(final, inter[-1])
        assert torch.equal(final, l0.forward_features(x))
        only = l0.forward_intermediates(x, indices=[1], intermediates_only=True, stop_early=True)
        assert len(only) == 1 and torch.equal(only[0], inter[1])
        pre = l0.forward_head(final, pre_logits=True)
        assert pre.shape == (1, 1280)
        assert torch.allclose(l0.get_classifier()(pre), l0(x), atol=1e-6)


def test_lwganet_reset_classifier_and_prune() -> None:
    m = zoo.create_model("lwganet_l0").eval()
    m.reset_classifier(7)
    assert m.get_classifier().out_features == 7 and m.num_classes == 7
    m.reset_classifier(0)
    with torch.no_grad():
        assert m(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 1280)
    kept = m.prune_intermediate_layers(indices=[0, 1], prune_head=True)
    assert kept == [0, 1] and len(m.stages) == 2 and m.num_features == 64


def test_lwganet_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    m = zoo.create_model("lwganet_l0", num_classes=3).train()
    x = torch.randn(2, 3, SMALL, SMALL)
    torch.manual_seed(1)
    m(x).sum().backward()
    g0 = m.stem.conv.weight.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    torch.manual_seed(1)
    m(x).sum().backward()
    assert torch.allclose(m.stem.conv.weight.grad, g0, atol=1e-5)


@pytest.mark.parametrize("size,suggest", [(224 + 16, "256x256"), (64, "96x96"), (100, "96x96")])
def test_lwganet_bad_sizes_raise_input_shape_error(l0, size: int, suggest: str) -> None:
    with pytest.raises(InputShapeError, match=suggest):
        l0(torch.randn(1, 3, size, size))


def test_lwganet_stem_tolerates_three_extra_pixels(l0) -> None:
    x = torch.randn(1, 3, 99, 131)
    with torch.no_grad():
        assert torch.equal(l0(x), l0(x[..., :96, :128]))


def test_lwganet_wrong_channels_raise(l0) -> None:
    with pytest.raises(InputShapeError, match="in_chans=1"):
        l0(torch.randn(1, 1, SMALL, SMALL))
    gray = zoo.create_model("lwganet_l0", in_chans=1, num_classes=2).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, SMALL, SMALL)).shape == (1, 2)


# --------------------------------------------------------------------------------------------- export

def test_lwganet_l0_onnx_legacy_exporter_matches_onnxruntime(l0) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, SMALL, 128)
    buf = io.BytesIO()
    with set_exportable(True):  # the export switch, as the exporter sets it
        torch.onnx.export(l0, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = l0(x).numpy()
    assert abs(y - ref).max() <= 1e-4
    # DRFD's 1 -> 2 grouped conv is written as a depthwise conv (onnxruntime's int8 grouped kernel is 30-100x slower)
    import onnx

    graph = onnx.load_from_string(buf.getvalue()).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    grouped = [(n.name, weights.get(n.input[1])) for n in graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    groups = {n.name: next(a.i for a in n.attribute if a.name == "group") for n in graph.node if n.op_type == "Conv"}
    drfd = [name for name, dims in grouped if "downsample" in name]
    assert len(drfd) >= 3 and all(weights.get(n.input[1]) for n in graph.node if n.name in drfd)
    assert [name for name, dims in grouped if dims is not None and dims[0] != groups[name]] == []


@pytest.mark.slow
def test_lwganet_l0_torch_export(l0) -> None:
    x = torch.randn(1, 3, SMALL, SMALL)
    with set_exportable(True):
        ep = torch.export.export(l0, (x,))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), l0(x), atol=1e-5)
