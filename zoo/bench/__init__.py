"""Measuring models: parameters, MACs (torch's FlopCounterMode), latency and peak memory.

Figures here feed ``zoo info`` and ``zoo bench``; tests may assert parameter and MAC counts, never times.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN statistics or blur filters are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), inputs: Sequence[torch.Tensor] | None = None
               ) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (FlopCounterMode reports FLOPs = 2 x MACs)."""
    was_training = model.training
    model.eval()
    if inputs is None:
        inputs = (torch.zeros(1, *input_size),)
    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def measure_latency(fn: Callable[[], object], warmup: int = 5, iters: int = 30) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_latency(fns: dict[str, Callable[[], object]], warmup: int = 5, rounds: int = 30,
                        settle: int = 0) -> dict[str, float]:
    """Median latency of several callables measured in alternation, so a busy machine slows all of them alike
    and their ratios stay meaningful.

    ``settle`` untimed calls precede each timed one. Runtimes with their own thread pools (onnxruntime's spinning
    workers, PyTorch's OpenMP team) pay for the switch from another runtime on the first call: threads waking up,
    caches refilled. An app runs one runtime call after call, so ``settle=1`` times that steady state while the
    rounds still alternate.
    """
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                for _ in range(settle):
                    fn()
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
