"""The selective scan of Mamba (Gu & Dao, arXiv:2312.00752) in interchangeable forms: plain PyTorch, a compiled
CPU kernel and mamba_ssm's CUDA kernel.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (A real, diagonal, negative; Δ > 0 after softplus)::

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t        y_t = C_t · h_t + D u_t        out_t = y_t · silu(z_t)

Argument names, shapes and options follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
(state-spaces/mamba): ``u, delta, z`` are ``(batch, d_inner, L)``, ``A`` is ``(d_inner, d_state)``, ``B, C`` are
``(batch, d_state, L)``, ``D`` and ``delta_bias`` are ``(d_inner,)``. The scan always runs in float32 whatever the
input dtype (as mamba_ssm's kernel does) and returns the input dtype.

The forms:

* ``"sequential"`` -- the recurrence written out, one step at a time. Slow; it is the reference the others are
  tested against.
* ``"compiled"`` -- the default on CPU wherever a C compiler exists: one fused pass per block of 16 channels, a
  small C kernel compiled on first use and loaded with ctypes (``zoo.layers.selective_scan_kernel``: why that form,
  and its training backward). 3-5x faster than ``"chunked"`` in inference and training.
* ``"chunked"`` -- the default on CUDA without mamba_ssm and on CPUs without a compiler, for inference and training.
  The sequence is cut into L2-cache-sized blocks processed one after another (carrying the state); inside a block,
  chunks of ``T`` steps are scanned in lock-step and stitched together by a short scan over the chunk boundaries, or,
  for wide layers (``batch·d_inner·d_state >= STEPWISE_MIN_ELEMS``), the block is stepped through with one fused
  multiply-add per step. It only ever multiplies decays ``exp(Δ A) <= 1`` together: the popular "cumsum in log space"
  form, ``h_t = exp(S_t) Σ_s exp(-S_s) x_s`` with ``S_t = Σ Δ A``, needs ``exp(-S_s)``, which overflows float32 as
  soon as ``|ΣΔA|`` passes ~88 -- at initialisation a 4,096-step sequence already reaches ~1,500. Everything runs in
  place in buffers allocated once per call (on CPU a fresh large temporary costs more in page faults than the
  arithmetic that fills it), with the states laid out ``(steps, batch, d_state, d_inner)`` so that ``y = C·h`` is one
  batched matrix product per block. With autograd it runs as ``SelectiveScanFunction``: the forward keeps only its
  inputs and the state entering each block, and the backward rescans each block from that state and runs the adjoint
  recurrence backwards through it, so training memory is linear in the length (as in mamba_ssm's CUDA kernel), not
  ``L·d_inner·d_state`` per layer.
  Plain PyTorch ops, so it runs wherever torch runs (CPU, CUDA, no compiler needed).
* ``"export"`` -- one loop node per Mamba layer, so the graph does not grow with the sequence length. Under the
  TorchScript ONNX exporter (``torch.onnx.export(..., dynamo=False)``) it is a scripted loop that becomes one
  ONNX ``Loop`` whose trip count and shapes come from the input (one graph for every input size); under
  torch.export / the dynamo exporter it is ``torch._higher_order_ops.scan`` (one ONNX ``Scan``; that exporter
  needs minutes per layer on 2 CPU cores). Each loop iteration scans a whole block of K chunks of T steps with the
  chunked form's three passes written out as straight-line code over (K, batch, d_state, d_inner) slabs, so the
  runtime executes ~(9T + 2K) ops per K·T time steps on cache-sized tensors (a per-step loop paid the runtime's
  per-op and per-iteration overhead several times per time step: onnxruntime was 4x slower than eager PyTorch).
* ``"cuda"`` -- ``mamba_ssm``'s fused kernel, used by ``"auto"`` when that package imports and the tensors are on
  a CUDA device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import is_exportable

from .selective_scan_kernel import kernel_available, selective_scan_compiled

SCAN_IMPLS = ("auto", "sequential", "chunked", "compiled", "export", "cuda")

# Budget (in float32 elements) for one block of the fast scan: its (block, b, d_state, d_inner) buffers (two in
# inference, three in the backward) stay in a core's L2 cache between the vectorised exp/mul that fill them and the
# step loops that read them back (measured on 1 thread, L=1k-64k, d_inner 64-512, N=16: 2^17 is 1.1-1.4x faster
# than 2^21, whose buffers stream through main memory; 2^15 pays the per-op overhead).
DEFAULT_BLOCK_ELEMS = 1 << 17
# export scan: steps per chunk (written out in the loop body) and floats per block and batch element
DEFAULT_EXPORT_CHUNK = 32
DEFAULT_EXPORT_BLOCK_ELEMS = 1 << 20
# exp(x) for x < -80 is < 2e-35: numerically nothing next to any state, but x86 CPUs compute exp in the
# denormal/underflow range up to 50x slower. Large Δ (and long chunks) land there all the time, so the fast paths
# clamp the exponent; the sequential reference does not, and the tests compare the two.
EXP_FLOOR = -80.0
# From this many states per step (batch·d_inner·d_state) on, stepping through a block one time step at a time beats
# the lock-step chunks on CPU (measured on 1 thread with 2^17-float blocks: d_inner 64 -> equal, 128+ -> steps
# 1.2x faster: each step is then big enough to amortise the per-op overhead, and the chunks do the recurrence twice).
STEPWISE_MIN_ELEMS = 2048
STEPWISE_BLOCK_ELEMS = DEFAULT_BLOCK_ELEMS


def _mamba_ssm_scan():
    """``mamba_ssm``'s CUDA selective scan, or None when the package (a CUDA-only build) is not importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA extension raising OSError/RuntimeError on import
        return None
    return selective_scan_fn


def export_requested() -> bool:
    """Whether the scan must take its export form (one loop node per layer) instead of the fast eager form.

    The switch is timm's ``timm.layers.is_exportable()``, set by an exporter with
    ``timm.layers.set_layer_config(exportable=True)`` or the ``timm.layers.set_exportable(True)`` context. A direct
    ``torch.onnx.export`` / ``torch.export`` call without the switch is also recognised (TorchScript tracing, or
    torch.export's tracing): the fast form's Python loops over thousands of steps would otherwise be unrolled into
    the graph, with its data-dependent ``.item()`` branch frozen in.
    """
    return is_exportable() or torch.jit.is_tracing() or torch.compiler.is_exporting()


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Everything in float32: Δ with its bias and softplus, as mamba_ssm does before the recurrence."""
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A.float(), B.float(), C.float()


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def _check_shapes(u, delta, A, B, C) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d_inner, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, seqlen = u.shape
    if A.shape[0] != d or A.dim() != 2:
        raise ValueError(f"A must be (d_inner={d}, d_state); got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, seqlen):
            raise ValueError(f"{name} must be (batch, d_state, L) = {(b, n, seqlen)}; got {tuple(t.shape)}")


def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence, literally: one time step per iteration. The reference every other form is tested against."""
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, d, seqlen = u.shape
    h = u.new_zeros(batch, d, A.shape[1])
    ys = []
    for t in range(seqlen):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * u[:, :, t, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, d, 0)
    return _finish(y, u, D, z, dtype)


def _chunk_len(block: int) -> int:
    """Steps per chunk: ~sqrt(block) balances the in-chunk loop against the loop over chunk boundaries."""
    return max(1, 1 << max(0, round(math.log2(max(block, 1)) / 2)))


class _BlockPlan:
    """How the fast scan cuts a sequence: blocks of ``block`` = K·T steps (the last one zero-padded), each scanned
    as K chunks of T steps in lock-step (K = 1: one step at a time). Buffers are time-major with d_inner innermost,
    ``(steps, batch, d_state, d_inner)``: a block's states are then one ``(steps·batch, d_state, d_inner)`` batch of
    row-major matrices, so ``y_t = C_t · h_t`` is a (1 x N) @ (N x d_inner) product per step that CPU BLAS runs at
    ~0.1 ns per state (with d_state innermost the same products, or a sum over the last axis, cost 3-5 ns per state:
    they were most of the scan's time), and one step of all K chunks is one slab for the recurrence."""

    def __init__(self, batch: int, d: int, n: int, seqlen: int, block_elems: int, min_block: int = 1) -> None:
        per_step = max(1, batch * d * n)
        block = max(1, min(seqlen, block_elems // per_step))
        # wide layers: one fused multiply-add per step already amortises the per-op overhead, and the lock-step
        # chunks would do the recurrence twice (see STEPWISE_MIN_ELEMS)
        stepwise = per_step >= STEPWISE_MIN_ELEMS
        if stepwise:
            block = max(1, min(block, STEPWISE_BLOCK_ELEMS // per_step))
        block = max(block, min(min_block, seqlen))
        self.t_len = block if stepwise else _chunk_len(block)
        self.k_len = -(-block // self.t_len)
        self.block = self.k_len * self.t_len
        self.padded = -(-max(seqlen, 1) // self.block) * self.block
        self.num_blocks = self.padded // self.block


def _scan_(a_steps, x_steps, dt, a_t, h0, work: dict, reverse: bool = False):
    """The recurrence ``h_t = a_t h_{t-1} + x_t`` in place over one block: ``x_steps`` (T views of (K, b, n, d),
    one per step of all K chunks) are overwritten by the states. ``reverse`` runs time backwards (the adjoint
    recurrence of the backward pass). Returns the state after the block's last step (in scan order).

    K = 1: one fused multiply-add per step. K > 1: pass 1 runs every chunk from a zero state; pass 2 walks the
    chunk boundaries with the decay over a whole chunk, exp(A ΣΔ) from ``dt`` (K·T, b, d) (a product of factors
    <= 1, so nothing can overflow whatever Δ is); pass 3 reruns the chunks from their true incoming states.
    ``work`` holds three (K, b, n, d) buffers reused for every block: on CPU a fresh buffer of that size is
    mapped anew by the allocator, and its page faults cost more than the arithmetic done in it.
    """
    order = range(len(x_steps) - 1, -1, -1) if reverse else range(len(x_steps))
    k_len = x_steps[0].shape[0]
    if k_len == 1:
        prev = h0.unsqueeze(0)
        for t in order:
            prev = x_steps[t].addcmul_(a_steps[t], prev)
        return prev[0].clone()
    local, incoming, decay = work["local"], work["incoming"], work["decay"]
    sums = dt.view(k_len, -1, *dt.shape[1:]).sum(1)  # (K, b, d)
    torch.mul(sums[:, :, None, :], a_t, out=decay).clamp_(min=EXP_FLOOR).exp_()
    local.copy_(x_steps[order[0]])
    for t in order[1:]:
        torch.addcmul(x_steps[t], a_steps[t], local, out=local)
    chunks = range(k_len - 1, -1, -1) if reverse else range(k_len)
    incoming[chunks[0]].copy_(h0)
    for k, k_next in zip(chunks, chunks[1:]):
        torch.addcmul(local[k], decay[k], incoming[k], out=incoming[k_next])
    carry = torch.addcmul(local[chunks[-1]], decay[chunks[-1]], incoming[chunks[-1]])
    prev = incoming
    for t in order:
        prev = x_steps[t].addcmul_(a_steps[t], prev)
    return carry


def _workspace(plan: _BlockPlan, batch: int, n: int, d: int, like: torch.Tensor) -> dict:
    """The (K, b, n, d) buffers of the lock-step passes, allocated once per scan (see ``_scan_``)."""
    if plan.k_len == 1:
        return {}
    return {k: like.new_empty(plan.k_len, batch, n, d) for k in ("local", "incoming", "decay")}


def _fill_decays_(out, dt, a_t, clamp: bool) -> None:
    """``out`` (steps, b, n, d) <- exp(Δ A); ``dt`` is (steps, b, d), ``a_t`` = A^T (n, d)."""
    torch.mul(dt[:, :, None, :], a_t, out=out)
    if clamp:
        out.clamp_(min=EXP_FLOOR)
    out.exp_()


def _step_views(buf, plan: _BlockPlan):
    """One (K, b, n, d) view per step of a (K·T, b, n, d) buffer, made once per buffer: at a few thousand elements
    per step, indexing costs as much as the arithmetic."""
    return buf.view(plan.k_len, plan.t_len, *buf.shape[1:]).unbind(1)


def _time_major_empty(batch: int, k: int, padded: int, like: torch.Tensor) -> torch.Tensor:
    """A float32 (batch, k, padded) tensor stored time-major, (padded, batch, k): a block of steps is then one
    contiguous slab, read or written in the layout of the state buffers (reading Δ with the stride of the sequence
    length while filling (steps, b, n, d) buffers cost more than the arithmetic)."""
    return like.new_empty(padded, batch, k, dtype=torch.float32).permute(1, 2, 0)


def _dt_and_dtu(u, delta, delta_bias, delta_softplus: bool, padded: int):
    """Δ (bias added, softplus applied) and Δ·u as (b, d, padded) float32 buffers (stored time-major); padding
    steps are zero (decay 1, input 0: they change no real output). Written once into their buffers, not built from
    temporaries (on CPU every fresh large tensor costs page faults on top of its arithmetic)."""
    batch, d, seqlen = u.shape
    dt_all = _time_major_empty(batch, d, padded, u)
    dtu_all = _time_major_empty(batch, d, padded, u)
    dt_real, dtu_real = dt_all[..., :seqlen], dtu_all[..., :seqlen]
    if delta_bias is not None:
        torch.add(delta, delta_bias.float()[:, None], out=dt_real)
    else:
        dt_real.copy_(delta)
    if delta_softplus:
        torch.ops.aten.softplus.out(dt_real, 1, 20, out=dt_real)
    torch.mul(dt_real, u, out=dtu_real)
    if padded != seqlen:
        dt_all[..., seqlen:].zero_()
        dtu_all[..., seqlen:].zero_()
    return dt_all, dtu_all


def _time_major(t, padded: int):
    """(b, k, L) -> (padded, b, k), contiguous, zero-padded at the end (for B and C: small next to the states)."""
    return F.pad(t.float(), (0, padded - t.shape[-1])).permute(2, 0, 1).contiguous()


def _needs_clamp(dt_all, A) -> bool:
    """Whether some Δ·A can reach the exp floor: one reduction decides for the whole sequence."""
    return dt_all.numel() > 0 and dt_all.max().item() * A.abs().max().item() > -EXP_FLOOR


def _scan_forward(dt_all, dtu_all, A, B, C, plan: _BlockPlan, boundaries: list | None = None):
    """The states block by block in two (block, b, n, d) buffers; returns y = C·h as (b, d, padded) (stored
    time-major). With ``boundaries`` (a list), the state entering each block is appended to it (what the backward
    restarts from)."""
    batch, d, padded = dt_all.shape
    n = A.shape[1]
    blk = plan.block
    a_t = A.t().contiguous()
    clamp = _needs_clamp(dt_all, A)
    dt_tm, dtu_tm = dt_all.permute(2, 0, 1), dtu_all.permute(2, 0, 1)  # (padded, b, d), contiguous
    b_tm, c_tm = _time_major(B, padded), _time_major(C, padded)
    buf_a = dt_all.new_empty(blk, batch, n, d)
    buf_x = torch.empty_like(buf_a)
    a_steps, x_steps = _step_views(buf_a, plan), _step_views(buf_x, plan)
    work = _workspace(plan, batch, n, d, buf_a)
    y = _time_major_empty(batch, d, padded, dt_all)
    y_tm = y.permute(2, 0, 1)
    h = dt_all.new_zeros(batch, n, d)
    for l0 in range(0, padded, blk):
        sl = slice(l0, l0 + blk)
        if boundaries is not None:
            boundaries.append(h)
        _fill_decays_(buf_a, dt_tm[sl], a_t, clamp)
        torch.mul(b_tm[sl, :, :, None], dtu_tm[sl, :, None, :], out=buf_x)
        h = _scan_(a_steps, x_steps, dt_tm[sl], a_t, h, work)
        torch.bmm(c_tm[sl].view(-1, 1, n), buf_x.view(-1, n, d), out=y_tm[sl].view(-1, 1, d))  # y_t = C_t · h_t
    return y


def _scan_backward(dt_all, dtu_all, A, B, C, gy, boundaries: list, plan: _BlockPlan):
    """Gradients of ``y = C·h`` (h the states) with respect to Δ, Δ·u, A, B and C, given ``gy`` = dL/dy
    (b, d, padded), by recomputing each block's states from the state that entered it, last block first.

    With the adjoint λ_t = a_{t+1} λ_{t+1} + gy_t C_t (a reverse scan of the same form as the forward one):
    dL/dx_t = λ_t for the input x_t = (Δu)_t B_t, and dL/da_t = λ_t h_{t-1} for the decay a_t = exp(Δ_t A). Memory is
    three (block, b, n, d) buffers whatever the length. Returns the recomputed y = C·h (the gate's gradient needs
    it) and the gradients (g_dt, g_dtu, g_A, g_B, g_C), all but g_A as (b, ·, padded) stored time-major."""
    batch, d, padded = dt_all.shape
    n = A.shape[1]
    blk = plan.block
    a_t = A.t().contiguous()
    clamp = _needs_clamp(dt_all, A)
    dt_tm, dtu_tm = dt_all.permute(2, 0, 1), dtu_all.permute(2, 0, 1)
    b_tm, c_tm = _time_major(B, padded), _time_major(C, padded)
    gy_tm = gy.permute(2, 0, 1).contiguous()  # (padded, b, d)
    # decays of steps 0..blk-1 in slots 0..blk-1; slot blk is the decay "after" the block for the adjoint (1: the
    # carry from the next block arrives already multiplied by that block's first decay)
    decays = dt_all.new_empty(blk + 1, batch, n, d)
    # states: slot 0 the state entering the block, slots 1..blk the block's states
    states = torch.empty_like(decays)
    adj = dt_all.new_empty(blk, batch, n, d)
    fwd_a, fwd_x = _step_views(decays[:blk], plan), _step_views(states[1:], plan)
    rev_a, rev_x = _step_views(decays[1:], plan), _step_views(adj, plan)
    work = _workspace(plan, batch, n, d, adj)
    y, g_dt, g_dtu = (_time_major_empty(batch, d, padded, dt_all) for _ in range(3))
    g_b, g_c = (_time_major_empty(batch, n, padded, dt_all) for _ in range(2))
    y_tm, g_dt_tm, g_dtu_tm, g_b_tm, g_c_tm = (t.permute(2, 0, 1) for t in (y, g_dt, g_dtu, g_b, g_c))
    g_a_t = a_t.new_zeros(n, d)
    carry = dt_all.new_zeros(batch, n, d)
    dt_next = dt_all.new_zeros(blk, batch, d)  # Δ shifted by one step: the adjoint's chunk decays
    for i in range(plan.num_blocks - 1, -1, -1):
        sl = slice(i * blk, (i + 1) * blk)
        dt, dtu, gy_blk = dt_tm[sl], dtu_tm[sl], gy_tm[sl]  # (blk, b, d)
        # the block's states again, from the state that entered it
        _fill_decays_(decays[:blk], dt, a_t, clamp)
        decays[blk].fill_(1.0)
        states[0].copy_(boundaries[i])
        torch.mul(b_tm[sl, :, :, None], dtu[:, :, None, :], out=states[1:])
        _scan_(fwd_a, fwd_x, dt, a_t, boundaries[i], work)
        h = states[1:].view(-1, n, d)  # (blk·b, n, d)
        torch.bmm(c_tm[sl].view(-1, 1, n), h, out=y_tm[sl].view(-1, 1, d))
        torch.bmm(h, gy_blk.view(-1, d, 1), out=g_c_tm[sl].view(-1, n, 1))
        # a_t h_{t-1} in slots 0..blk-1 (the states themselves are no longer needed)
        prev = states[:blk].mul_(decays[:blk])
        # the adjoint: inputs gy_t C_t, decays a_{t+1}, scanned backwards from the carry of the next block
        torch.mul(c_tm[sl, :, :, None], gy_blk[:, :, None, :], out=adj)
        dt_next[:-1] = dt[1:]
        _scan_(rev_a, rev_x, dt_next, a_t, carry, work, reverse=True)
        carry = decays[0] * adj[0]
        lam = adj.view(-1, n, d)
        torch.bmm(b_tm[sl].view(-1, 1, n), lam, out=g_dtu_tm[sl].view(-1, 1, d))
        torch.bmm(lam, dtu.view(-1, d, 1), out=g_b_tm[sl].view(-1, n, 1))
        w = prev.mul_(adj)  # λ_t a_t h_{t-1} = dL/da_t · a_t, (blk, b, n, d)
        torch.sum(torch.mul(w, a_t, out=adj), 2, out=g_dt_tm[sl])  # Σ_n w A (adj is free now)
        g_a_t += w.mul_(dt[:, :, None, :]).sum((0, 1))  # Σ_t w Δ
    return y, g_dt, g_dtu, g_a_t.t(), g_b, g_c


class SelectiveScanFunction(torch.autograd.Function):
    """The selective scan with a backward that recomputes the states (as mamba_ssm's CUDA kernel does).

    Autograd through the recurrence keeps several ``(batch, d_inner, L, d_state)`` tensors per layer (a 256² LightM-UNet
    training step needed ~19 GB); this saves only the inputs and one ``(batch, d_inner, d_state)`` state per block
    of at least ``d_state`` steps (so together at most one ``(batch, d_inner, L)`` tensor), and the backward rescans
    each block from its saved state, last block first. Forward and backward run the same in-place block scan as
    inference; the gradients equal autograd through ``selective_scan_sequential`` to float32 rounding.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, block_elems: int):
        dtype = u.dtype
        u32, delta32, z32 = (None if t is None else t.float() for t in (u, delta, z))
        A32 = A.float()
        batch, d, seqlen = u.shape
        plan = _BlockPlan(batch, d, A.shape[1], seqlen, block_elems, min_block=A.shape[1])
        dt_all, dtu_all = _dt_and_dtu(u32, delta32, delta_bias, delta_softplus, plan.padded)
        boundaries: list = []
        y = _scan_forward(dt_all, dtu_all, A32, B, C, plan, boundaries)[..., :seqlen]
        if D is not None:
            y.addcmul_(u32, D.float()[:, None])
        if z is not None:
            y.mul_(F.silu(z32))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, torch.stack(boundaries))
        ctx.delta_softplus, ctx.plan = delta_softplus, plan
        return y.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        u, delta, A, B, C, D, z, delta_bias, boundaries = ctx.saved_tensors
        plan = ctx.plan
        seqlen = u.shape[2]
        u32, delta32 = u.float(), delta.float()
        g_out = g_out.float()
        dt_all, dtu_all = _dt_and_dtu(u32, delta32, delta_bias, ctx.delta_softplus, plan.padded)
        gy = g_out if z is None else g_out * F.silu(z.float())
        gy_all = F.pad(gy, (0, plan.padded - seqlen))
        y, g_dt, g_dtu, g_a, g_b, g_c = _scan_backward(dt_all, dtu_all, A.float(), B, C, gy_all,
                                                       list(boundaries.unbind(0)), plan)
        y, g_dt, g_dtu, g_b, g_c = (t[..., :seqlen] for t in (y, g_dt, g_dtu, g_b, g_c))
        dt = dt_all[..., :seqlen]
        g_dt.addcmul_(g_dtu, u32)  # x = (Δ·u) B
        g_u = g_dtu.mul_(dt)
        g_d = g_z = g_bias = None
        if D is not None:
            g_u.addcmul_(gy, D.float()[:, None])
            g_d = (gy * u32).sum((0, 2))
            y.addcmul_(u32, D.float()[:, None])
        if z is not None:
            z32 = z.float()
            s = torch.sigmoid(z32)
            g_z = g_out * y * s * (1 + z32 * (1 - s))  # d silu(z) / dz = s (1 + z (1 - s))
        if ctx.delta_softplus:
            pre = delta32 if delta_bias is None else delta32 + delta_bias.float()[:, None]
            g_dt = torch.where(pre > 20, g_dt, g_dt * torch.sigmoid(pre))  # torch's softplus: linear above 20
        if delta_bias is not None:
            g_bias = g_dt.sum((0, 2)).to(delta_bias.dtype)
        return (g_u.to(u.dtype), g_dt.to(delta.dtype), g_a.to(A.dtype), g_b.to(B.dtype), g_c.to(C.dtype),
                None if g_d is None else g_d.to(D.dtype), None if g_z is None else g_z.to(z.dtype), g_bias,
                None, None)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           block_elems: int = DEFAULT_BLOCK_ELEMS):
    """The fast scan: blocks of the sequence in turn (memory bounded by ``block_elems`` floats per buffer),
    lock-step chunks (or single steps, for wide layers) inside a block, all in place.

    With autograd on, it runs as ``SelectiveScanFunction`` (training memory linear in the length); without, the
    same block scan writes y straight into preallocated buffers.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if needs_grad:
        return SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), block_elems)
    return _chunked_inference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_elems)


def _chunked_inference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_elems):
    """The inference form: three full-length (batch, d_inner, L) buffers and two block buffers, the D·u skip and
    the silu(z) gate applied in place."""
    dtype = u.dtype
    u, delta, z = (None if t is None else t.float() for t in (u, delta, z))
    A = A.float()
    batch, d, seqlen = u.shape
    plan = _BlockPlan(batch, d, A.shape[1], seqlen, block_elems)
    dt_all, dtu_all = _dt_and_dtu(u, delta, delta_bias, delta_softplus, plan.padded)
    y = _scan_forward(dt_all, dtu_all, A, B, C, plan)[..., :seqlen]
    if D is not None:
        y.addcmul_(u, D.float()[:, None])
    if z is not None:
        gate = dtu_all[..., :seqlen]  # Δ·u is no longer needed: its buffer takes silu(z)
        torch.ops.aten.silu.out(z, out=gate)
        y.mul_(gate)
    return y.to(dtype)


def _export_block_source(t_len: int, k_len: int) -> str:
    """Source of one block of the export scan: K = ``k_len`` chunks of T = ``t_len`` steps, every step written out.

    The block arrives time-major -- ``dt, dtu`` (T, K, batch, d), ``b, c`` (T, K, batch, n) -- so step t of all K
    chunks is one slab and each line below is one runtime op over K chunks at once. States are laid out
    (K, batch, n, d), d innermost: the broadcasts then run along contiguous rows of d (onnxruntime's broadcasting
    Mul is ~5x slower when the innermost axis is the short n = 16). Three passes, as in ``_scan_``:

    1. the recurrence inside every chunk from a zero state (T steps; the decays exp(Δ A) <= 1 and inputs Δ B u of
       each step are kept for pass 3);
    2. the K chunk boundaries, one small step each: incoming_{k+1} = exp(A ΣΔ_k) incoming_k + final_k, starting
       from the block's incoming state (the decay over a chunk is exp of a sum of non-positive terms: <= 1);
    3. the recurrence again from the true incoming states, with the outputs y_t = C_t · h_t as one batched
       (1 x n) @ (n x d) MatMul per step (~20% faster in onnxruntime than Mul + ReduceSum over n).

    Straight-line code, not inner loops: an inner loop would become a nested ONNX ``Loop``, whose per-iteration
    cost is many times that of one op on a (K, batch, n, d) slab. The same source is compiled by TorchScript
    (legacy exporter) and run as plain Python (eager, and the body of ``torch._higher_order_ops.scan`` under
    torch.export).
    """
    t, k = range(t_len), range(k_len)
    names = lambda p, r: ", ".join(f"{p}{i}" for i in r) + ","  # noqa: E731
    # split(1) keeps the split axis (size 1): no Squeeze/Unsqueeze ops per piece, and cat() of the pieces is a
    # single Concat
    lines = [
        "def block(h0: Tensor, dt: Tensor, dtu: Tensor, b: Tensor, c: Tensor, at: Tensor) -> Tuple[Tensor, Tensor]:",
        f"    {names('dt', t)} = dt.unsqueeze(-2).split(1, 0)",  # (1, K, batch, 1, d) each
        f"    {names('w', t)} = dtu.unsqueeze(-2).split(1, 0)",
        f"    {names('b', t)} = b.unsqueeze(-1).split(1, 0)",  # (1, K, batch, n, 1) each
        f"    {names('c', t)} = c.unsqueeze(-2).split(1, 0)",  # (1, K, batch, 1, n) each
    ]
    for i in t:
        lines += [f"    a{i} = torch.exp(dt{i} * at)", f"    u{i} = w{i} * b{i}",
                  "    h = u0" if i == 0 else f"    h = a{i} * h + u{i}"]
    lines += [
        f"    {names('cd', k)} = torch.exp(dt.sum(0, keepdim=True).unsqueeze(-2) * at).split(1, 1)",
        f"    {names('f', k)} = h.split(1, 1)",  # (1, 1, batch, n, d) each
        "    i0 = h0",
    ]
    lines += [f"    i{j + 1} = cd{j} * i{j} + f{j}" for j in k]
    lines += [f"    h = torch.cat([{names('i', k)}], 1)"]
    for i in t:
        lines += [f"    h = a{i} * h + u{i}", f"    y{i} = torch.matmul(c{i}, h)"]
    lines += [f"    y = torch.cat([{names('y', t)}], 0)",  # (T, K, batch, 1, d); an explicit shape keeps the rank known
              f"    return i{k_len}, y.reshape([y.size(0), y.size(1), y.size(2), y.size(4)])"]
    return "\n".join(lines) + "\n"


_EXPORT_LAYOUT_SOURCE = """
def layout(dt: Tensor, dtu: Tensor, b: Tensor, c: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    # (L, batch, ·) -> (blocks, T, K, batch, ·), zero-padded at the end to whole blocks (Δ = 0: decay 1, input 0,
    # so the padding changes no real output)
    seqlen = dt.size(0)
    bt = dt.size(1)
    d = dt.size(2)
    n = b.size(2)
    nb = (seqlen + @BLK - 1) // @BLK
    pad = nb * @BLK - seqlen
    dt = torch.cat([dt, dt.new_zeros([pad, bt, d])], 0).reshape(nb, @K, @T, bt, d).transpose(1, 2)
    dtu = torch.cat([dtu, dtu.new_zeros([pad, bt, d])], 0).reshape(nb, @K, @T, bt, d).transpose(1, 2)
    b = torch.cat([b, b.new_zeros([pad, bt, n])], 0).reshape(nb, @K, @T, bt, n).transpose(1, 2)
    c = torch.cat([c, c.new_zeros([pad, bt, n])], 0).reshape(nb, @K, @T, bt, n).transpose(1, 2)
    return dt, dtu, b, c


def loop(dt: Tensor, dtu: Tensor, b: Tensor, c: Tensor, at: Tensor) -> Tensor:
    # dt, dtu: (L, batch, d); b, c: (L, batch, n); at = A^T: (n, d) -> y: (L, batch, d)
    seqlen = dt.size(0)
    dt, dtu, b, c = layout(dt, dtu, b, c)
    h = torch.zeros([1, 1, dt.size(3), at.size(0), at.size(1)], dtype=dt.dtype, device=dt.device)
    ys: List[Tensor] = []
    for s in range(dt.size(0)):
        h, y = block(h, dt[s], dtu[s], b[s], c[s], at)
        ys.append(y)
    y = torch.stack(ys, 0)
    return y.transpose(1, 2).reshape(-1, y.size(3), y.size(4))[:seqlen]
"""

_EXPORT_FNS: dict[tuple[int, int, bool], dict] = {}


def _export_fns(t_len: int, k_len: int, script: bool) -> dict:
    """``layout``/``block``/``loop`` for blocks of ``k_len`` chunks of ``t_len`` steps: TorchScript-compiled
    (``script=True``: the legacy exporter keeps the block loop as one ONNX ``Loop`` whose trip count and shapes
    come from the input) or plain Python (eager and torch.export). Compiled once per (T, K)."""
    key = (t_len, k_len, script)
    if key not in _EXPORT_FNS:
        src = _export_block_source(t_len, k_len) + (
            _EXPORT_LAYOUT_SOURCE.replace("@BLK", str(t_len * k_len)).replace("@K", str(k_len))
            .replace("@T", str(t_len)))
        if script:
            cu = torch.jit.CompilationUnit(src)
            _EXPORT_FNS[key] = {"layout": cu.layout, "block": cu.block, "loop": cu.loop}
        else:
            ns = {"torch": torch, "Tensor": torch.Tensor, "Tuple": tuple, "List": list}
            exec(compile(src, f"<selective_scan export T={t_len} K={k_len}>", "exec"), ns)  # our generated source
            _EXPORT_FNS[key] = {name: ns[name] for name in ("layout", "block", "loop")}
    return _EXPORT_FNS[key]


def _export_chunks_per_block(t_len: int, d: int, n: int, block_elems: int) -> int:
    """K: chunks per block, so that one step's (K, d, n) slab holds about ``block_elems / T`` floats per batch
    element (cache-sized work per op), between 1 and 64 (pass 2 is K small sequential steps)."""
    return max(1, min(64, block_elems // max(1, t_len * d * n)))


def _softplus_export(x: torch.Tensor) -> torch.Tensor:
    """softplus as relu(x) + log(1 + exp(-|x|)): never overflows, within float32 rounding of torch's softplus
    (<= 1e-6 for |x| <= 100), and ~2.5x faster in onnxruntime than its ``Softplus`` kernel (not vectorised:
    measured 39 vs 17 ms on 1M floats), a cost paid on every (batch, d_inner, L) Δ."""
    return torch.relu(x) + torch.log(1.0 + torch.exp(-x.abs()))


def selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          chunk_len: int = DEFAULT_EXPORT_CHUNK, block_elems: int = DEFAULT_EXPORT_BLOCK_ELEMS):
    """The scan as one loop over blocks: one ONNX ``Loop`` (legacy exporter) or ``Scan`` (dynamo) per layer.

    The sequence is cut into blocks of K chunks of ``chunk_len`` (T) steps (zero-padded to whole blocks); each
    loop iteration scans one block with a fixed set of ops over (K, batch, n, d) slabs (see
    ``_export_block_source``): 2T steps and K chunk-boundary steps, each one op over all chunks. onnxruntime thus
    runs ~(9T + 2K) ops per K·T time steps, each on a cache-sized slab, instead of several ops per time step, and
    the graph does not grow with the sequence length. K is chosen from d_inner·d_state (``block_elems``).

    * Under the TorchScript tracer (``torch.onnx.export(..., dynamo=False)``, the fast exporter) the loop is a
      scripted function; tracing keeps its ``prim::Loop``, which becomes an ONNX ``Loop`` whose trip count and
      shapes come from the input, so one graph serves every input size.
    * Under torch.export / the dynamo exporter the block loop is ``torch._higher_order_ops.scan`` (one ``Scan``).
    * Eagerly, the same block function runs in a Python loop.
    """
    from torch._higher_order_ops import scan

    dtype = u.dtype
    u, delta, z = (None if t is None else t.float() for t in (u, delta, z))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = _softplus_export(delta)
    A, B, C = A.float(), B.float(), C.float()
    t_len = max(1, int(chunk_len))
    k_len = _export_chunks_per_block(t_len, int(A.shape[0]), int(A.shape[1]), block_elems)  # static per layer
    args = (delta.permute(2, 0, 1), (delta * u).permute(2, 0, 1), B.permute(2, 0, 1), C.permute(2, 0, 1))
    at = A.t().contiguous()  # (n, d): d innermost, like the states
    if torch.jit.is_tracing():
        y = _export_fns(t_len, k_len, script=True)["loop"](*args, at)  # (L, b, d)
    else:
        fns = _export_fns(t_len, k_len, script=False)
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            y = fns["loop"](*args, at)
        else:
            block = fns["block"]

            def body(h, x):
                h, y = block(h, *x, at)
                return h.clone(memory_format=torch.contiguous_format), y  # carry strides must match h0

            h0 = u.new_zeros(1, 1, u.shape[0], A.shape[1], A.shape[0])
            _, y = scan(body, h0, fns["layout"](*args))  # (blocks, T, K, b, d)
            y = y.transpose(1, 2).reshape(-1, y.shape[3], y.shape[4])[:u.shape[2]]
    return _finish(y.permute(1, 2, 0), u, D, z, dtype)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   impl: str = "auto") -> torch.Tensor:
    """Run the selective scan with the chosen implementation (see the module docstring).

    ``"auto"``: the loop form while torch.export / ONNX export is tracing; mamba_ssm's kernel for CUDA tensors when
    it is installed; the compiled kernel for CPU tensors where it could be built (``kernel_status()``); the
    chunked form otherwise.
    """
    _check_shapes(u, delta, A, B, C)
    if impl == "auto":
        if export_requested():
            impl = "export"
        elif u.is_cuda and _mamba_ssm_scan() is not None:
            impl = "cuda"
        elif u.device.type == "cpu" and not torch.compiler.is_compiling() and kernel_available():
            impl = "compiled"
        else:
            impl = "chunked"
    if impl == "sequential":
        return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "compiled":
        return selective_scan_compiled(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "export":
        return selective_scan_export(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "cuda":
        fn = _mamba_ssm_scan()
        if fn is None or not u.is_cuda:
            raise RuntimeError("scan impl 'cuda' needs the mamba_ssm package and CUDA tensors; "
                               "use 'auto' or 'chunked' elsewhere")
        return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    raise ValueError(f"unknown selective scan impl {impl!r}; choose one of {', '.join(SCAN_IMPLS)}")
