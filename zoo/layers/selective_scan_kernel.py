"""The selective scan as a compiled CPU kernel: one fused pass over the sequence per block of 16 channels.

Why a kernel, and why this form of one. The scan is ~4 flops and one exponential per state and step; written as
PyTorch ops (``selective_scan.py``'s ``"chunked"`` form) every one of those is a separate pass over a block of
states through memory, which costs ~5x the arithmetic on a CPU. Fused, the states of 16 channels stay in
registers and L1 for the whole sequence. The choices that keep the package installable with pip alone:

* **No build step and no new dependency.** The C source ships inside the package (``selective_scan_cpu.c``) and is
  compiled on first use with the system C compiler (``$CC``, else ``cc``), into the user cache
  (``$ZOO_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/zoo/kernels``, else ``~/.cache/zoo/kernels``; ~1 s, once per
  source, compiler and CPU), and loaded with ``ctypes``: no Python headers, no pybind11, no ninja (which
  ``torch.utils.cpp_extension`` needs), no torch ABI to match. Where there is no compiler (or ``ZOO_SCAN_KERNEL=0``)
  the plain-PyTorch chunked scan runs instead, with the same results to float32 rounding; ``kernel_status()`` says
  which and why.
* **Not ``torch.compile``.** The recurrence is a loop over time; Inductor would unroll it (minutes of compilation
  per layer shape and input size) or leave it as the same per-op passes.
* **Portable C, not intrinsics.** The loops are written so that the compiler vectorises them across channels (the
  channel axis is unit-stride in every layout), with ``-march=native`` where the compiler accepts it; the
  exponential is a branch-free polynomial (relative error ~2e-7) so that it vectorises too. Math flags are the
  subset of ``-ffast-math`` that permits that (no ``-ffast-math`` itself: a shared library built with it could
  switch the whole process to flush-to-zero on some toolchains).
* **Threads from Python.** ``ctypes`` releases the GIL, so the channel blocks are split over
  ``torch.get_num_threads()`` Python threads; the library itself has no OpenMP runtime that could clash with
  torch's.

Training: the forward saves the inputs and the state entering every chunk of ``CHECKPOINT_STEPS`` steps (at most
one ``(batch, d_inner, L)`` tensor's worth, since a chunk has at least ``d_state`` steps); the backward recomputes
each chunk's states from its checkpoint and runs the adjoint recurrence backwards through it, as mamba_ssm's CUDA
kernel does, so memory is linear in the length.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("selective_scan_cpu.c")
BLOCK_CHANNELS = 16  # W in the C source: channels per vectorised block
# Steps per backward chunk: the chunk's recomputed states and decays (2 x 64 x d_state x 16 floats, 128 KiB at
# d_state 16) stay in L2, and the checkpoints cost d_state/64 of a (batch, d_inner, L) tensor.
CHECKPOINT_STEPS = 64
_MATH_FLAGS = ["-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math", "-ffinite-math-only",
               "-freciprocal-math"]
_BASE_FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fPIC", "-shared", *_MATH_FLAGS]
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_FORWARD_ARGS = [_I64] * 6 + [_PTR, _I64, _I64, _PTR, ctypes.c_int, _PTR, _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR,
                              _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64]
_BACKWARD_ARGS = _FORWARD_ARGS[:-3] + [_PTR, _I64, _I64, _PTR, _I64] + [_PTR] * 8


def _cache_dir() -> Path:
    if os.environ.get("ZOO_KERNEL_CACHE"):
        return Path(os.environ["ZOO_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zoo" / "kernels"


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU model and its feature flags (a cached library built on another
    CPU must not be loaded on this one)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(dict.fromkeys(wanted))
    except OSError:
        return platform.processor() + platform.machine()


def _compile(compiler: str, out_dir: Path) -> Path:
    """Compile SOURCE into out_dir (atomically: a concurrent process sees either nothing or a whole library)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = SOURCE.read_bytes()
    attempts = [_BASE_FLAGS + ["-march=native"], _BASE_FLAGS]
    errors = []
    for flags in attempts:
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                         _cpu_identity().encode()])).hexdigest()[:20]
        target = out_dir / f"selective_scan_cpu-{key}.so"
        if target.exists():
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".so.tmp")
        os.close(fd)
        proc = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
    raise RuntimeError(f"{compiler} could not build {SOURCE.name}: {errors[-1][0]}")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The compiled library and a one-line status; (None, why) when it is unavailable."""
    if os.environ.get("ZOO_SCAN_KERNEL", "1").strip().lower() in ("0", "off", "false", "no"):
        return None, "disabled by ZOO_SCAN_KERNEL"
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return None, f"no C compiler ({compiler!r} not found; set CC)"
    try:
        path = _compile(compiler, _cache_dir())
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        logger.warning("selective scan kernel unavailable, using the PyTorch scan: %s", exc)
        return None, str(exc)
    lib.zoo_scan_forward.argtypes, lib.zoo_scan_forward.restype = _FORWARD_ARGS, ctypes.c_int
    lib.zoo_scan_backward.argtypes, lib.zoo_scan_backward.restype = _BACKWARD_ARGS, ctypes.c_int
    logger.info("selective scan kernel: %s", path)
    return lib, f"compiled: {path}"


def kernel_available() -> bool:
    """Whether the compiled scan can run here (compiling it on the first call)."""
    return _load()[0] is not None


def kernel_status() -> str:
    """Where the compiled scan lives, or why it is not used."""
    return _load()[1]


@functools.lru_cache(maxsize=8)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zoo-scan")


def _channel_ranges(d: int) -> list[tuple[int, int]]:
    """Channel ranges (whole 16-channel blocks) for the threads torch would use."""
    blocks = -(-d // BLOCK_CHANNELS)
    parts = max(1, min(torch.get_num_threads(), blocks))
    bounds = [round(i * blocks / parts) * BLOCK_CHANNELS for i in range(parts + 1)]
    return [(lo, min(hi, d)) for lo, hi in zip(bounds, bounds[1:]) if lo < min(hi, d)]


def _run(fn, ranges, make_args) -> None:
    if len(ranges) == 1:
        statuses = [fn(*make_args(0, *ranges[0]))]
    else:
        statuses = list(_pool(len(ranges)).map(lambda i: fn(*make_args(i, *ranges[i])), range(len(ranges))))
    if any(statuses):
        raise MemoryError("selective scan kernel: out of memory for its scratch buffers")


def _time_channels(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """A (batch, channels, L) tensor as float32 (batch, L, channels) with unit channel stride (a view when it
    already is one, as Mamba's Δ, z, B and C are), and its batch and time strides."""
    v = t.float().transpose(1, 2)
    if v.stride(2) != 1:
        v = v.contiguous()
    return v, v.stride(0), v.stride(1)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _inputs(u, delta, A, B, C, D, z, delta_bias) -> dict:
    """The kernel's view of the inputs: float32, channel-innermost (batch, L, channels) views with their strides."""
    views = {"delta": _time_channels(delta), "u": _time_channels(u), "B": _time_channels(B), "C": _time_channels(C),
             "z": _time_channels(z) if z is not None else (None, 0, 0)}
    views["A"] = A.float().t().contiguous()
    views["D"] = None if D is None else D.float().contiguous()
    views["bias"] = None if delta_bias is None else delta_bias.float().contiguous()
    return views


def _common_args(v: dict, batch: int, seqlen: int, d: int, n: int, lo: int, hi: int, softplus: bool) -> tuple:
    (dl, dl_sb, dl_st), (uv, u_sb, u_st) = v["delta"], v["u"]
    (bv, b_sb, b_st), (cv, c_sb, c_st), (zv, z_sb, z_st) = v["B"], v["C"], v["z"]
    return (batch, seqlen, d, n, lo, hi, dl.data_ptr(), dl_sb, dl_st, _ptr(v["bias"]), int(softplus),
            uv.data_ptr(), u_sb, u_st, v["A"].data_ptr(), bv.data_ptr(), b_sb, b_st, cv.data_ptr(), c_sb, c_st,
            _ptr(v["D"]), _ptr(zv), z_sb, z_st)


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints: bool):
    lib = _load()[0]
    batch, d, seqlen = u.shape
    n = A.shape[1]
    v = _inputs(u, delta, A, B, C, D, z, delta_bias)
    out = u.new_empty(batch, seqlen, d, dtype=torch.float32)
    chunk = max(CHECKPOINT_STEPS, n)
    ckpt = u.new_empty(batch, -(-seqlen // chunk), n, d, dtype=torch.float32) if checkpoints else None
    _run(lib.zoo_scan_forward, _channel_ranges(d), lambda i, lo, hi: (
        *_common_args(v, batch, seqlen, d, n, lo, hi, delta_softplus), out.data_ptr(), _ptr(ckpt), chunk))
    return out.transpose(1, 2), ckpt


def _backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, g_out):
    lib = _load()[0]
    batch, d, seqlen = u.shape
    n = A.shape[1]
    v = _inputs(u, delta, A, B, C, D, z, delta_bias)
    gv, g_sb, g_st = _time_channels(g_out)
    ranges = _channel_ranges(d)
    new = functools.partial(torch.empty, batch, seqlen, d)
    g_delta, g_u = new(), new()
    g_z = new() if z is not None else None
    g_a = torch.zeros_like(v["A"])
    g_d = torch.zeros(d) if D is not None else None
    g_bias = torch.zeros(d) if delta_bias is not None else None
    # B and C are shared by all channels: each thread sums its channels' share into its own buffer
    g_b = torch.zeros(len(ranges), batch, seqlen, n)
    g_c = torch.zeros(len(ranges), batch, seqlen, n)
    _run(lib.zoo_scan_backward, ranges, lambda i, lo, hi: (
        *_common_args(v, batch, seqlen, d, n, lo, hi, delta_softplus), gv.data_ptr(), g_sb, g_st, ckpt.data_ptr(),
        max(CHECKPOINT_STEPS, n), g_delta.data_ptr(), g_u.data_ptr(), g_a.data_ptr(), g_b[i].data_ptr(),
        g_c[i].data_ptr(), _ptr(g_d), _ptr(g_z), _ptr(g_bias)))
    return (g_u.transpose(1, 2), g_delta.transpose(1, 2), g_a.t(), g_b.sum(0).transpose(1, 2),
            g_c.sum(0).transpose(1, 2), g_d, None if g_z is None else g_z.transpose(1, 2), g_bias)


class CompiledScanFunction(torch.autograd.Function):
    """The compiled scan with its hand-written backward (states recomputed chunk by chunk from checkpoints)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        out, ckpt = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        return out.to(u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        grads = _backward(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt, g_out)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        return (*(None if g is None else g.to(x.dtype) for g, x in zip(grads, inputs)), None)


def selective_scan_compiled(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan through the compiled CPU kernel (same arguments as ``selective_scan``); raises
    RuntimeError when the kernel is unavailable (``kernel_status()`` says why) or the tensors are not on the CPU."""
    lib, status = _load()
    if lib is None:
        raise RuntimeError(f"the compiled selective scan is unavailable: {status}")
    if any(t is not None and t.device.type != "cpu" for t in (u, delta, A, B, C, D, z, delta_bias)):
        raise RuntimeError("the compiled selective scan runs on CPU tensors only")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if needs_grad:
        return CompiledScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints=False)[0].to(u.dtype)
