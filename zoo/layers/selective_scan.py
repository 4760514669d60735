"""The selective scan of Mamba (Gu & Dao, arXiv:2312.00752) in plain PyTorch, in three interchangeable forms.

The recurrence, per batch ``b``, channel ``d`` and state ``n`` (A real, diagonal, negative; Δ > 0 after softplus)::

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t        y_t = C_t · h_t + D u_t        out_t = y_t · silu(z_t)

Argument names, shapes and options follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
(state-spaces/mamba): ``u, delta, z`` are ``(batch, d_inner, L)``, ``A`` is ``(d_inner, d_state)``, ``B, C`` are
``(batch, d_state, L)``, ``D`` and ``delta_bias`` are ``(d_inner,)``. The scan always runs in float32 whatever the
input dtype (as mamba_ssm's kernel does) and returns the input dtype.

Why three forms:

* ``"sequential"`` -- the recurrence written out, one step at a time. Slow; it is the reference the others are
  tested against.
* ``"chunked"`` -- the default on CPU and for training. The sequence is cut into blocks that are processed one
  after another (carrying the state), so inference never holds more than one block of ``L·d_inner·d_state``
  states; inside a block, chunks of ``T`` steps are scanned in lock-step and then stitched together by a short scan
  over the chunk boundaries. It only ever multiplies decays ``exp(Δ A) <= 1`` together: the popular "cumsum in
  log space" form, ``h_t = exp(S_t) Σ_s exp(-S_s) x_s`` with ``S_t = Σ Δ A``, needs ``exp(-S_s)`` which overflows
  float32 as soon as ``|ΣΔA|`` passes ~88 -- at initialisation a 4,096-step sequence already reaches ~1,500.
  Wide layers (``batch·d_inner·d_state >= STEPWISE_MIN_ELEMS``) instead step through each (L2-cache-sized) block
  with one fused multiply-add per step: each step is then big enough that the chunk bookkeeping costs more than it
  saves. Without autograd the whole path works in place in preallocated buffers (on CPU a fresh 8 MB temporary
  costs more in page faults than the arithmetic that fills it) and computes the decays with ``exp2``.
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

SCAN_IMPLS = ("auto", "sequential", "chunked", "export", "cuda")

# Budget (in float32 elements) for one block of the chunked scan: two (block, d_inner, d_state) buffers live at once.
DEFAULT_BLOCK_ELEMS = 1 << 21
# export scan: steps per chunk (written out in the loop body) and floats per block and batch element
DEFAULT_EXPORT_CHUNK = 32
DEFAULT_EXPORT_BLOCK_ELEMS = 1 << 20
# exp(x) for x < -80 is < 2e-35: numerically nothing next to any state, but x86 CPUs compute exp in the
# denormal/underflow range up to 50x slower. Large Δ (and long chunks) land there all the time, so the fast paths
# clamp the exponent; the sequential reference does not, and the tests compare the two.
EXP_FLOOR = -80.0
# The inference paths compute exp(Δ A) as exp2(Δ · A log2(e)): torch's exp2 is ~1.8x faster than its exp on CPU
# (measured on AVX2), and the extra rounding of A·log2(e) is a relative 6e-8 of the exponent. exp2 stays fast down
# to -126 (its smallest normal result); this floor is EXP_FLOOR in base 2.
LOG2_E = 1.4426950408889634
EXP2_FLOOR = EXP_FLOOR * LOG2_E
# From this many states per step (batch·d_inner·d_state) on, stepping through a block one time step at a time beats
# the lock-step chunks on CPU (measured crossover ~3-4k on 1 thread: d_inner 64-128 -> chunks, 256+ -> steps).
STEPWISE_MIN_ELEMS = 4096
# Block budget of the stepwise path: two (block, d_inner, d_state) buffers of 512 KiB each stay in the L2 cache
# between the vectorised exp/mul that fill them and the step loop that reads them back (measured on 1 thread at
# L=4096, d_inner=512, N=16: 2^17 elements is ~1.4x faster than 2^21).
STEPWISE_BLOCK_ELEMS = 1 << 17


def _mamba_ssm_scan():
    """``mamba_ssm``'s CUDA selective scan, or None when the package (a CUDA-only build) is not importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA extension raising OSError/RuntimeError on import
        return None
    return selective_scan_fn


def _is_exporting() -> bool:
    try:
        if torch.compiler.is_exporting():
            return True
    except AttributeError:  # older torch
        pass
    return bool(torch.onnx.is_in_onnx_export())


def _is_tracing(t: torch.Tensor) -> bool:
    """True while torch.export / dynamo / the ONNX exporter trace the model (then the loop must be one node)."""
    if _is_exporting():
        return True
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:
        pass
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


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


def _scan_block_grad(dA, dBu, h0):
    """Differentiable block scan (training). ``dA``/``dBu`` are (b, L, d, n); returns all states and the last one.

    The block is viewed as K chunks of T steps. Pass 1 runs the recurrence inside every chunk at once (T steps,
    starting from zero) together with the running products of decays; pass 2 walks the K chunk boundaries to get
    each chunk's incoming state; pass 3 adds ``(Π decays) · incoming`` to every state. Only products of factors in
    (0, 1] are formed, so nothing can overflow, whatever Δ is. Out of place throughout, so autograd can keep what
    it saved.
    """
    b, seqlen, d, n = dA.shape
    t_len = _chunk_len(seqlen)
    k_len = -(-seqlen // t_len)
    pad = k_len * t_len - seqlen
    if pad:  # padding steps decay by 1 and add 0: they change nothing and are cut off below
        dA = torch.cat([dA, dA.new_ones(b, pad, d, n)], dim=1)
        dBu = torch.cat([dBu, dBu.new_zeros(b, pad, d, n)], dim=1)
    dA = dA.reshape(b, k_len, t_len, d, n)
    dBu = dBu.reshape(b, k_len, t_len, d, n)
    hs, ps = [dBu[:, :, 0]], [dA[:, :, 0]]
    for t in range(1, t_len):
        hs.append(dA[:, :, t] * hs[-1] + dBu[:, :, t])
        ps.append(dA[:, :, t] * ps[-1])
    h_loc = torch.stack(hs, dim=2)
    prod = torch.stack(ps, dim=2)
    incoming = []
    h = h0
    for k in range(k_len):
        incoming.append(h)
        h = prod[:, k, -1] * h + h_loc[:, k, -1]
    states = h_loc + prod * torch.stack(incoming, dim=1)[:, :, None]
    states = states.reshape(b, k_len * t_len, d, n)
    return states[:, :seqlen], states[:, seqlen - 1]


def _scan_block_inference(dA, dBu, dt, A, h0):
    """In-place block scan without autograd: overwrites ``dBu`` (b, K, T, d, n) with the states of the block.

    ``dA`` (b, K, T, d, n) holds the decays exp(Δ A) and ``dt`` (b, K, T, d) the steps Δ. Pass 1 runs all K chunks
    in lock-step from a zero state and keeps only each chunk's final state; the decay across a whole chunk is
    exp(A ΣΔ) (an exponent <= 0, so it cannot overflow); pass 2 walks the K chunk boundaries for each chunk's
    incoming state; pass 3 reruns the chunks from their true incoming states, writing the states over ``dBu``.
    Returns the state after the block's last step.
    """
    t_len = dA.shape[2]
    h = torch.zeros_like(dBu[:, :, 0])
    for t in range(t_len):
        h = torch.addcmul(dBu[:, :, t], dA[:, :, t], h)
    chunk_decay = torch.exp((dt.sum(2)[..., None] * A).clamp_(min=EXP_FLOOR))  # (b, K, d, n)
    incoming = []
    carry = h0
    for k in range(dA.shape[1]):
        incoming.append(carry)
        carry = torch.addcmul(h[:, k], chunk_decay[:, k], carry)
    prev = torch.stack(incoming, dim=1)
    for t in range(t_len):
        prev = dBu[:, :, t].addcmul_(dA[:, :, t], prev)
    return carry


def _scan_block_steps(steps, h0):
    """In-place block scan one step at a time (one fused multiply-add per step). ``steps`` holds, per time step,
    the pair (``dBu_t``, ``dA_t``) as (b, d, n) views of the block buffers; each ``dBu_t`` is overwritten with the
    state h_t. For wide layers (``batch·d_inner·d_state`` >= ``STEPWISE_MIN_ELEMS``) each step is already big
    enough to amortise the per-op overhead, and this does half the arithmetic of the chunked passes. The views are
    made once per buffer (not per step) because at ~8k elements per step the indexing costs as much as the maths."""
    prev = h0
    for dbu_t, da_t in steps:
        prev = dbu_t.addcmul_(da_t, prev)
    return prev.clone()


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           block_elems: int = DEFAULT_BLOCK_ELEMS):
    """Chunked scan: blocks of the sequence in turn (bounded memory), parallel chunks inside a block (speed).

    ``block_elems`` caps ``batch·block_len·d_inner·d_state``; without autograd two buffers of that size are
    allocated once and reused for every block, so inference memory does not depend on the sequence length
    (and the page faults of fresh large allocations are paid once).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if needs_grad:
        return _chunked_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_elems)
    return _chunked_inference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_elems)


def _chunked_grad(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_elems):
    """The differentiable form: out-of-place block scans (see ``_scan_block_grad``)."""
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, d, seqlen = u.shape
    n = A.shape[1]
    block = max(1, min(seqlen, block_elems // max(1, batch * d * n)))
    dt_all = delta.transpose(1, 2)  # (b, L, d)
    dtu_all = (delta * u).transpose(1, 2)
    b_all = B.transpose(1, 2)  # (b, L, n)
    c_all = C.transpose(1, 2)
    h = u.new_zeros(batch, d, n)
    ys = []
    for l0 in range(0, seqlen, block):
        l1 = min(seqlen, l0 + block)
        dA = torch.exp((dt_all[:, l0:l1, :, None] * A).clamp(min=EXP_FLOOR))  # (b, l, d, n)
        dBu = dtu_all[:, l0:l1, :, None] * b_all[:, l0:l1, None, :]
        states, h = _scan_block_grad(dA, dBu, h)
        ys.append(torch.einsum("bldn,bln->bld", states, c_all[:, l0:l1]))
    return _finish(torch.cat(ys, dim=1).transpose(1, 2), u, D, z, dtype)


def _chunked_inference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_elems):
    """The inference form: in place, in three full-length (batch, d_inner, L) buffers and two block buffers.

    Fresh large tensors are expensive on CPU beyond their arithmetic (every new page is a page fault: an 8 MB
    temporary costs ~10x the elementwise op that fills it), so Δ, Δ·u and y are each written once into a buffer,
    and the D·u skip and the silu(z) gate are applied in place.
    """
    dtype = u.dtype
    u, delta, z = (None if t is None else t.float() for t in (u, delta, z))
    A, B, C = A.float(), B.float(), C.float()
    batch, d, seqlen = u.shape
    n = A.shape[1]
    block = max(1, min(seqlen, block_elems // max(1, batch * d * n)))
    stepwise = batch * d * n >= STEPWISE_MIN_ELEMS
    if stepwise:
        block = max(1, min(block, STEPWISE_BLOCK_ELEMS // (batch * d * n)))
    t_len = block if stepwise else _chunk_len(block)
    k_len = -(-block // t_len)
    block = k_len * t_len
    padded = -(-seqlen // block) * block

    # Δ (with bias and softplus) and Δ·u in the input layout (contiguous passes; transposing them costs more than
    # the strided reads below); padding steps (Δ = 0: decay 1, input 0) come last and change no real output
    dt_all = u.new_empty(batch, d, padded)
    dtu_all = u.new_empty(batch, d, padded)
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
    b_all = F.pad(B, (0, padded - seqlen)).transpose(1, 2).contiguous()  # (b, L, n): small
    c_all = F.pad(C, (0, padded - seqlen)).transpose(1, 2).contiguous()

    buf_a = u.new_empty(batch, k_len, t_len, d, n)
    buf_b = torch.empty_like(buf_a)
    steps = list(zip(buf_b.view(batch, block, d, n).unbind(1), buf_a.view(batch, block, d, n).unbind(1)))
    y = u.new_empty(batch, d, padded)
    a2 = A * LOG2_E
    # the floor only matters when some Δ·A can reach it: one reduction decides for the whole sequence
    clamp = seqlen > 0 and dt_real.max().item() * a2.abs().max().item() > -EXP2_FLOOR
    h = u.new_zeros(batch, d, n)
    for l0 in range(0, padded, block):
        sl = slice(l0, l0 + block)
        dt = dt_all[..., sl].transpose(1, 2).view(batch, k_len, t_len, d)
        torch.mul(dt[..., None], a2, out=buf_a)
        if clamp:
            buf_a.clamp_(min=EXP2_FLOOR)
        buf_a.exp2_()  # exp(Δ A), see EXP2_FLOOR
        torch.mul(dtu_all[..., sl].transpose(1, 2).view(batch, k_len, t_len, d, 1),
                  b_all[:, sl].view(batch, k_len, t_len, 1, n), out=buf_b)
        if stepwise:
            h = _scan_block_steps(steps, h)
        else:
            h = _scan_block_inference(buf_a, buf_b, dt, A, h)
        # y_t = C_t · h_t as a batch of (1 x n) @ (n x d) products: the fastest layout for CPU BLAS here
        y_blk = torch.bmm(c_all[:, sl].reshape(-1, 1, n), buf_b.view(-1, d, n).transpose(1, 2))
        y[..., sl] = y_blk.view(batch, block, d).transpose(1, 2)
    y = y[..., :seqlen]
    if D is not None:
        y.addcmul_(u, D.float()[:, None])
    if z is not None:
        gate = dtu_real  # Δ·u is no longer needed: its buffer takes silu(z)
        torch.ops.aten.silu.out(z, out=gate)
        y.mul_(gate)
    return y.to(dtype)


def _export_block_source(t_len: int, k_len: int) -> str:
    """Source of one block of the export scan: K = ``k_len`` chunks of T = ``t_len`` steps, every step written out.

    The block arrives time-major -- ``dt, dtu`` (T, K, batch, d), ``b, c`` (T, K, batch, n) -- so step t of all K
    chunks is one slab and each line below is one runtime op over K chunks at once. States are laid out
    (K, batch, n, d), d innermost: the broadcasts then run along contiguous rows of d (onnxruntime's broadcasting
    Mul is ~5x slower when the innermost axis is the short n = 16). Three passes, as in ``_scan_block_inference``:

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
        if not _is_tracing(u):
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

    ``"auto"``: mamba_ssm's kernel for CUDA tensors when it is installed, the loop form while torch.export /
    ONNX export is tracing, the chunked form otherwise.
    """
    _check_shapes(u, delta, A, B, C)
    if impl == "auto":
        if _is_exporting():
            impl = "export"
        elif u.is_cuda and _mamba_ssm_scan() is not None:
            impl = "cuda"
        else:
            impl = "chunked"
    if impl == "sequential":
        return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "chunked":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "export":
        return selective_scan_export(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "cuda":
        fn = _mamba_ssm_scan()
        if fn is None or not u.is_cuda:
            raise RuntimeError("scan impl 'cuda' needs the mamba_ssm package and CUDA tensors; "
                               "use 'auto' or 'chunked' elsewhere")
        return fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    raise ValueError(f"unknown selective scan impl {impl!r}; choose one of {', '.join(SCAN_IMPLS)}")
