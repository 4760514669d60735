"""The pure-PyTorch Mamba layer and its selective scans (zoo.layers.mamba / zoo.layers.selective_scan).

Specification: the layer has mamba_ssm's parameter names, shapes and initialisation; every scan implementation
equals the plain sequential recurrence to 1e-5, including with large Δ over long sequences, where the
"cumsum in log space" shortcut overflows.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import selective_scan_kernel
from zoo.layers.mamba import Mamba, set_scan_impl
from zoo.layers.selective_scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_export,
    selective_scan_sequential,
)
from zoo.layers.selective_scan_kernel import kernel_available, kernel_status, selective_scan_compiled


def _need(impl: str) -> None:
    """Skip a case for the compiled kernel on a machine without a C compiler (it then falls back, tested below)."""
    if impl == "compiled" and not kernel_available():
        pytest.skip(f"compiled scan unavailable here: {kernel_status()}")


def _scan_inputs(batch=2, d=6, n=4, seqlen=50, delta_shift=0.0, seed=0, dtype=torch.float32):
    """Inputs scaled so that outputs are O(1): a 1e-5 tolerance then means ~1e-5 relative error in float32."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d, seqlen, generator=g)
    delta = torch.randn(batch, d, seqlen, generator=g) + delta_shift
    a = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    b = torch.randn(batch, n, seqlen, generator=g) / math.sqrt(n)
    c = torch.randn(batch, n, seqlen, generator=g) / math.sqrt(n)
    dd = torch.randn(d, generator=g)
    z = torch.randn(batch, d, seqlen, generator=g)
    bias = torch.randn(d, generator=g) * 0.1
    return [t.to(dtype) for t in (u, delta, a, b, c, dd, z)] + [bias]


def _naive_recurrence(u, delta, a, b, c, dd, z, bias):
    """The recurrence in float64, spelled out independently of the library, as ground truth for the reference."""
    u, delta, a, b, c, dd, z, bias = (t.double() for t in (u, delta, a, b, c, dd, z, bias))
    dt = F.softplus(delta + bias[:, None])
    h = torch.zeros(u.shape[0], u.shape[1], a.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dt[:, :, t, None] * a) * h + dt[:, :, t, None] * b[:, None, :, t] * u[:, :, t, None]
        ys.append((h * c[:, None, :, t]).sum(-1) + dd * u[:, :, t])
    return torch.stack(ys, -1) * F.silu(z)


def test_sequential_reference_is_the_recurrence():
    args = _scan_inputs(seqlen=20)
    ref = selective_scan_sequential(*args[:7], delta_bias=args[7], delta_softplus=True)
    assert (ref.double() - _naive_recurrence(*args)).abs().max() < 1e-5


@pytest.mark.parametrize("impl", ["chunked", "compiled", "export"])
@pytest.mark.parametrize("seqlen,delta_shift", [(1, 0.0), (37, 0.0), (300, 0.0), (300, 6.0), (2000, 8.0)])
def test_scans_match_sequential_reference(impl, seqlen, delta_shift):
    _need(impl)
    u, delta, a, b, c, dd, z, bias = _scan_inputs(seqlen=seqlen, delta_shift=delta_shift, d=4 if seqlen > 500 else 6)
    ref = selective_scan_sequential(u, delta, a, b, c, dd, z, bias, delta_softplus=True)
    out = selective_scan(u, delta, a, b, c, dd, z, bias, delta_softplus=True, impl=impl)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5


def test_large_delta_long_sequence_where_log_space_cumsum_overflows():
    """|ΣΔA| reaches thousands: exp(-cumsum(ΔA)) is inf in float32, our chunked scan stays exact."""
    u, delta, a, b, c, dd, z, bias = _scan_inputs(batch=1, d=3, n=4, seqlen=3000, delta_shift=3.0)
    dt = F.softplus(delta + bias[:, None])
    log_decay = torch.einsum("bdl,dn->bdln", dt, a).cumsum(2)
    assert log_decay.min() < -5000  # the regime of the issue
    assert torch.isinf(torch.exp(-log_decay)).any()  # the naive "cumsum in log space" form would overflow
    ref = selective_scan_sequential(u, delta, a, b, c, dd, z, bias, delta_softplus=True)
    for block_elems in (1 << 21, 3 * 4 * 100, 7):  # one block, many blocks, one step per block
        out = selective_scan_chunked(u, delta, a, b, c, dd, z, bias, delta_softplus=True, block_elems=block_elems)
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max().item() <= 1e-5
    # the export form: one block of 64 chunks; many blocks of 2 chunks of 8 steps (the block-to-block carry)
    for chunk_len, block_elems in ((32, 1 << 20), (8, 3 * 4 * 8 * 2)):
        out = selective_scan_export(u, delta, a, b, c, dd, z, bias, delta_softplus=True, chunk_len=chunk_len,
                                    block_elems=block_elems)
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max().item() <= 1e-5


def test_chunked_block_boundaries_and_odd_lengths():
    u, delta, a, b, c, dd, z, bias = _scan_inputs(batch=3, seqlen=173)
    ref = selective_scan_sequential(u, delta, a, b, c, dd, z, bias, delta_softplus=True)
    for block_elems in (3 * 6 * 4 * 10, 3 * 6 * 4 * 17, 3 * 6 * 4 * 64):
        out = selective_scan_chunked(u, delta, a, b, c, dd, z, bias, delta_softplus=True, block_elems=block_elems)
        assert (out - ref).abs().max().item() <= 1e-5
    for chunk_len, block_elems in ((1, 1 << 20), (5, 6 * 4 * 5 * 3), (16, 1 << 20)):  # K = 64, 3, 64 chunks
        out = selective_scan_export(u, delta, a, b, c, dd, z, bias, delta_softplus=True, chunk_len=chunk_len,
                                    block_elems=block_elems)
        assert (out - ref).abs().max().item() <= 1e-5


def _grads(fn, args, softplus=True, **kwargs):
    """Output and gradients for all eight inputs (u, Δ, A, B, C, D, z, Δ bias) under a loss that weights every output
    differently (so no gradient can cancel out by symmetry)."""
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in args]
    out = fn(*leaves[:7], delta_bias=leaves[7], delta_softplus=softplus, **kwargs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("case", [
    dict(batch=2, d=3, n=4, seqlen=45, delta_shift=1.0, block_elems=2 * 3 * 4 * 20),  # 3 blocks of 5 chunks
    dict(batch=2, d=3, n=4, seqlen=300, delta_shift=6.0, block_elems=1 << 21),  # large Δ: decays underflow
    dict(batch=1, d=5, n=4, seqlen=37, delta_shift=0.0, block_elems=7),  # blocks of d_state steps, 2 chunks each
    dict(batch=1, d=256, n=16, seqlen=70, delta_shift=0.0, block_elems=1 << 21),  # wide: one step at a time
    dict(batch=2, d=3, n=4, seqlen=2, delta_shift=0.0, block_elems=1 << 21),  # shorter than a block
])
def test_scan_function_gradients_match_autograd_through_sequential(case):
    """SelectiveScanFunction's hand-written backward (states recomputed block by block, adjoint scanned backwards)
    gives the gradients autograd finds through the literal recurrence, for every input, within 1e-4 relative."""
    block_elems = case.pop("block_elems")
    args = _scan_inputs(**case)
    out_ref, g_ref = _grads(selective_scan_sequential, args)
    out, g = _grads(selective_scan_chunked, args, block_elems=block_elems)
    assert (out - out_ref).abs().max().item() <= 1e-5
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), g_ref, g):
        assert a.abs().max() > 0, name
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item(), name


def test_scan_function_gradients_without_softplus_gate_or_skip():
    """Δ used as given (no bias, no softplus), no z gate, no D skip: the optional inputs get no gradient."""
    u, delta, a, b, c, _, _, _ = _scan_inputs(batch=2, d=4, n=3, seqlen=29)
    args = [u, F.softplus(delta), a, b, c, None, None, None]
    out_ref, g_ref = _grads(selective_scan_sequential, args, softplus=False)
    out, g = _grads(selective_scan_chunked, args, softplus=False, block_elems=2 * 4 * 3 * 8)
    assert (out - out_ref).abs().max().item() <= 1e-5
    for a_ref, a_got in zip(g_ref[:5], g[:5]):
        assert (a_ref - a_got).abs().max().item() <= 1e-4 * a_ref.abs().max().item()


def _saved_bytes(fn, args) -> tuple[int, int]:
    """(bytes autograd saves for the backward beyond the inputs themselves, bytes of the inputs), measured with
    saved_tensors_hooks over distinct storages."""
    leaves = [t.clone().requires_grad_(True) for t in args]
    inputs = {t.untyped_storage().data_ptr() for t in leaves}
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves[:7], delta_bias=leaves[7], delta_softplus=True)
    extra = sum(nbytes for ptr, nbytes in saved.items() if ptr not in inputs)
    return extra, sum(t.untyped_storage().nbytes() for t in leaves)


def test_scan_function_saves_no_state_sized_tensors():
    """Beyond its inputs, the training scan saves at most one (batch, d_inner, L) tensor's worth (one state per
    block of >= d_state steps), whatever d_state and L are; autograd through the recurrence saves several
    (batch, d_inner, L, d_state) tensors, which is what made a 256² LightM-UNet training step need ~19 GB."""
    batch, d = 1, 32
    for n, seqlen in ((4, 256), (16, 1024)):  # d_state x length grows 16x
        args = _scan_inputs(batch=batch, d=d, n=n, seqlen=seqlen)
        state_bytes = batch * d * seqlen * n * 4
        block_elems = batch * d * n * 64
        extra, _ = _saved_bytes(functools.partial(selective_scan_chunked, block_elems=block_elems), args)
        assert extra <= batch * d * seqlen * 4 + batch * d * n * 4, (n, seqlen, extra)
        ref_extra, _ = _saved_bytes(selective_scan_sequential, args)
        assert ref_extra >= 2 * state_bytes  # the measure does see state-sized tensors where they are kept


@pytest.mark.parametrize("case", [
    dict(batch=2, d=3, n=4, seqlen=45, delta_shift=1.0),  # fewer channels than one 16-channel block
    dict(batch=2, d=3, n=4, seqlen=300, delta_shift=6.0),  # large Δ: decays underflow; 5 checkpoint chunks
    dict(batch=1, d=40, n=16, seqlen=130, delta_shift=0.0),  # two full blocks and a remainder, 3 chunks
    dict(batch=2, d=3, n=4, seqlen=2, delta_shift=0.0),  # shorter than a chunk
])
def test_compiled_scan_gradients_match_autograd_through_sequential(case):
    """The compiled kernel's backward (states recomputed per chunk from checkpoints, adjoint run backwards) gives
    autograd's gradients through the literal recurrence, for all eight inputs, within 1e-4 relative."""
    _need("compiled")
    args = _scan_inputs(**case)
    out_ref, g_ref = _grads(selective_scan_sequential, args)
    out, g = _grads(selective_scan_compiled, args)
    assert (out - out_ref).abs().max().item() <= 1e-5
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), g_ref, g):
        assert a.abs().max() > 0, name
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item(), name


def test_compiled_scan_gradients_without_softplus_gate_or_skip():
    _need("compiled")
    u, delta, a, b, c, _, _, _ = _scan_inputs(batch=2, d=20, n=3, seqlen=29)
    args = [u, F.softplus(delta), a, b, c, None, None, None]
    out_ref, g_ref = _grads(selective_scan_sequential, args, softplus=False)
    out, g = _grads(selective_scan_compiled, args, softplus=False)
    assert (out - out_ref).abs().max().item() <= 1e-5
    assert g[5:] == [None, None, None]
    for a_ref, a_got in zip(g_ref[:5], g[:5]):
        assert (a_ref - a_got).abs().max().item() <= 1e-4 * a_ref.abs().max().item()


def test_compiled_scan_saves_no_state_sized_tensors():
    """Checkpoints every >= d_state steps: at most one (batch, d_inner, L) tensor's worth beyond the inputs."""
    _need("compiled")
    batch, d = 1, 32
    for n, seqlen in ((4, 256), (16, 1024)):
        args = _scan_inputs(batch=batch, d=d, n=n, seqlen=seqlen)
        extra, _ = _saved_bytes(selective_scan_compiled, args)
        assert 0 < extra <= batch * d * seqlen * 4 + batch * d * n * 4, (n, seqlen, extra)


def test_compiled_scan_threads_split_channels_with_the_same_result():
    """The channel blocks run on torch.get_num_threads() threads; B's and C's gradients, summed over channels,
    come from per-thread buffers: one thread and three threads agree."""
    _need("compiled")
    args = _scan_inputs(batch=2, d=70, n=8, seqlen=90)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, g1 = _grads(selective_scan_compiled, args)
        torch.set_num_threads(3)
        out3, g3 = _grads(selective_scan_compiled, args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out1, out3)
    for a, b in zip(g1, g3):
        assert (a - b).abs().max().item() <= 1e-6 * a.abs().max().item()


def test_auto_uses_the_compiled_kernel_on_cpu_and_falls_back_without_a_compiler(monkeypatch, tmp_path):
    import zoo.layers.selective_scan as scan_module

    args = _scan_inputs(seqlen=40)
    ref = selective_scan_sequential(*args[:7], delta_bias=args[7], delta_softplus=True)
    used = []
    for name in ("selective_scan_compiled", "selective_scan_chunked"):
        real = getattr(scan_module, name)
        monkeypatch.setattr(scan_module, name, lambda *a, _n=name, _r=real, **k: used.append(_n) or _r(*a, **k))
    selective_scan_kernel._load.cache_clear()
    monkeypatch.setenv("ZOO_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    try:
        assert not kernel_available() and "could not build" in kernel_status()
        out = selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True)
        assert used == ["selective_scan_chunked"] and (out - ref).abs().max() <= 1e-5
        with pytest.raises(RuntimeError, match="compiled selective scan is unavailable"):
            selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True, impl="compiled")
        monkeypatch.setenv("ZOO_SCAN_KERNEL", "0")
        selective_scan_kernel._load.cache_clear()
        assert kernel_status() == "disabled by ZOO_SCAN_KERNEL"
        monkeypatch.delenv("ZOO_SCAN_KERNEL")
        monkeypatch.delenv("CC")
        selective_scan_kernel._load.cache_clear()
        if not kernel_available():
            pytest.skip(f"no C compiler here: {kernel_status()}")
        assert list((tmp_path / "cache").glob("selective_scan_cpu-*.so"))  # built into the configured cache
        used.clear()
        out = selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True)
        assert used == ["selective_scan_compiled"] and (out - ref).abs().max() <= 1e-5
    finally:
        selective_scan_kernel._load.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scan_runs_in_float32_for_half_inputs(dtype):
    args = _scan_inputs(seqlen=64, dtype=dtype)
    out = selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True, impl="chunked")
    assert out.dtype == dtype
    ref32 = selective_scan_sequential(*(t.float() for t in args[:7]), delta_bias=args[7], delta_softplus=True)
    assert torch.equal(out, ref32.to(dtype)) or (out.float() - ref32).abs().max() <= 1e-5 + 2 ** -7 * ref32.abs().max()


def test_scan_rejects_bad_shapes_and_impl():
    u, delta, a, b, c, dd, z, bias = _scan_inputs()
    with pytest.raises(ValueError, match=r"B must be \(batch, d_state, L\)"):
        selective_scan(u, delta, a, b[..., :-1], c)
    with pytest.raises(ValueError, match="unknown selective scan impl 'fast'"):
        selective_scan(u, delta, a, b, c, impl="fast")
    with pytest.raises(RuntimeError, match="needs the mamba_ssm package and CUDA tensors"):
        selective_scan(u, delta, a, b, c, impl="cuda")


# --- the layer ---------------------------------------------------------------------------------------------------

def test_mamba_parameter_names_and_shapes_are_mamba_ssm():
    m = Mamba(d_model=40)  # d_inner 80, dt_rank ceil(40/16)=3, d_state 16, d_conv 4
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "A_log": (80, 16), "D": (80,),
        "in_proj.weight": (160, 40),
        "conv1d.weight": (80, 1, 4), "conv1d.bias": (80,),
        "x_proj.weight": (3 + 32, 80),
        "dt_proj.weight": (80, 3), "dt_proj.bias": (80,),
        "out_proj.weight": (40, 80),
    }
    assert m.conv1d.groups == 80 and m.conv1d.padding == (3,)


def test_mamba_initialisation_is_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(d_model=64, d_state=16)
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    # log-uniform: the mean of log(dt) sits half way between log(1e-3) and log(1e-1)
    assert abs(torch.log(dt).mean().item() - (math.log(1e-3) + math.log(1e-1)) / 2) < 0.5
    bound = 4 ** -0.5  # dt_rank = 64/16 = 4
    assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.abs().max() > 0.8 * bound
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32
    # the floor: a dt range below 1e-4 is clamped to 1e-4 before the inverse softplus
    tiny = Mamba(d_model=16, dt_min=1e-6, dt_max=2e-6)
    assert torch.allclose(F.softplus(tiny.dt_proj.bias), torch.full((32,), 1e-4), rtol=1e-3)


def _mamba_by_hand(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's reference forward path, step by step, from the layer's weights."""
    seqlen = x.shape[1]
    xz = x @ m.in_proj.weight.t()
    xs, z = xz[..., : m.d_inner], xz[..., m.d_inner:]
    xs = F.conv1d(xs.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=3, groups=m.d_inner)[..., :seqlen]
    xs = F.silu(xs)
    dbl = xs.transpose(1, 2) @ m.x_proj.weight.t()
    dt, b, c = dbl.split([m.dt_rank, m.d_state, m.d_state], -1)
    delta = F.softplus(dt @ m.dt_proj.weight.t() + m.dt_proj.bias)  # (B, L, d_inner)
    a = -torch.exp(m.A_log)
    h = torch.zeros(x.shape[0], m.d_inner, m.d_state)
    ys = []
    for t in range(seqlen):
        h = torch.exp(delta[:, t, :, None] * a) * h + (delta[:, t] * xs[:, :, t])[..., None] * b[:, t, None, :]
        ys.append((h * c[:, t, None, :]).sum(-1) + m.D * xs[:, :, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ m.out_proj.weight.t()


@pytest.mark.parametrize("impl", ["sequential", "chunked", "compiled", "export"])
def test_mamba_forward_equals_mamba_ssm_reference_path(impl):
    _need(impl)
    torch.manual_seed(0)
    m = Mamba(d_model=16, scan_impl=impl)
    with torch.no_grad():
        m.D.normal_()
        m.dt_proj.bias.add_(2.0)  # larger steps than at init, so decays matter
    x = torch.randn(2, 33, 16)
    with torch.no_grad():
        assert (m(x) - _mamba_by_hand(m, x)).abs().max().item() <= 1e-5


def test_set_scan_impl_switches_every_layer_and_validates():
    net = torch.nn.Sequential(Mamba(8), Mamba(8))
    set_scan_impl(net, "sequential")
    assert [m.scan_impl for m in net] == ["sequential", "sequential"]
    with pytest.raises(ValueError, match="unknown scan impl 'gpu'"):
        set_scan_impl(net, "gpu")
    with pytest.raises(ValueError, match=r"Mamba expects \(batch, L, d_model=8\)"):
        net[0](torch.randn(2, 5, 9))


@pytest.mark.parametrize("delta_shift", [0.0, 8.0])
def test_stepwise_path_for_wide_layers_matches_reference(delta_shift):
    """batch·d_inner·d_state >= STEPWISE_MIN_ELEMS takes the one-step-at-a-time block path: same numbers."""
    from zoo.layers.selective_scan import STEPWISE_MIN_ELEMS

    u, delta, a, b, c, dd, z, bias = _scan_inputs(batch=1, d=STEPWISE_MIN_ELEMS // 16, n=16, seqlen=90,
                                                  delta_shift=delta_shift)
    ref = selective_scan_sequential(u, delta, a, b, c, dd, z, bias, delta_softplus=True)
    for block_elems in (1 << 21, STEPWISE_MIN_ELEMS * 37):  # one block; three blocks of 37 steps
        out = selective_scan_chunked(u, delta, a, b, c, dd, z, bias, delta_softplus=True, block_elems=block_elems)
        assert (out - ref).abs().max().item() <= 1e-5


# --- ONNX export (the TorchScript exporter; the LightM-UNet export goes the same way) -----------------------------

def _onnx_nodes(graph) -> list:
    """Every node of an ONNX graph, including those inside Loop/Scan/If bodies."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.g.node:
                nodes.extend(_onnx_nodes(attr.g))
            for g in attr.graphs:
                nodes.extend(_onnx_nodes(g))
    return nodes


def test_mamba_layer_exports_to_one_onnx_loop_that_does_not_grow_with_length(tmp_path):
    """One ONNX Loop per Mamba layer; exporting at two lengths gives the same graph size (nothing unrolled), and
    one graph runs any length in onnxruntime (the scan's shapes come from the input, not from constants)."""
    import warnings

    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    m = Mamba(d_model=16).eval()
    with torch.no_grad():
        m.dt_proj.bias.add_(2.0)  # steps large enough that the decays matter
        m.D.normal_()
    counts = {}
    for seqlen in (24, 96):
        path = tmp_path / f"mamba_{seqlen}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
            torch.onnx.export(m, (torch.randn(2, seqlen, 16),), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "L"}})
        graph = onnx.load(str(path)).graph
        ops = [n.op_type for n in graph.node]
        assert ops.count("Loop") == 1 and "Scan" not in ops
        # one insert per iteration into the output sequence: onnxruntime copies a sequence on every further insert,
        # which made the runtime quadratic in the number of iterations (7 s instead of 0.5 s at L=16384)
        assert [n.op_type for n in _onnx_nodes(graph)].count("SequenceInsert") <= 1
        counts[seqlen] = (len(graph.node), len(_onnx_nodes(graph)))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for length in (seqlen, 37, 1):  # the export length, another one (not a multiple of the unroll), a single step
            x = torch.randn(3, length, 16)
            with torch.no_grad():
                ref = m(x)
            got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
            assert got.shape == ref.shape and ref.abs().max() > 0.01
            assert (got - ref).abs().max().item() <= 1e-4
    assert counts[24] == counts[96]


def test_timm_exportable_switch_selects_the_export_form(monkeypatch):
    """timm's is_exportable() (set by the exporter) is what sends "auto" to the one-loop export form."""
    from timm.layers import set_layer_config

    import zoo.layers.selective_scan as scan_module

    calls = []
    real = scan_module.selective_scan_export
    monkeypatch.setattr(scan_module, "selective_scan_export", lambda *a, **k: calls.append(1) or real(*a, **k))
    u, delta, a, b, c, dd, z, bias = _scan_inputs(seqlen=20)
    with torch.no_grad():
        fast = selective_scan(u, delta, a, b, c, dd, z, bias, delta_softplus=True)
        assert calls == []
        with set_layer_config(exportable=True):
            exported = selective_scan(u, delta, a, b, c, dd, z, bias, delta_softplus=True)
    assert calls == [1]
    assert (fast - exported).abs().max().item() <= 1e-5
