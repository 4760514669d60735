"""Which operators the int8 ``.pte`` keeps in float: XNNPACK's int8 kernels are not faster than its float ones for
every operator, and which lose depends on the CPU.

Why: per-operator ETDump profiles of the XNNPACK-delegated files (``benchmarks/pte_op_profile.py``: one thread,
224², AMD EPYC with avx512_vnni) showed the int8 depthwise convolutions slower than the float ones (EMOv2-5M: 8.5 ms
against 5.3 ms over its 19 depthwise layers), while the int8 fully connected layers ran 3.3x faster. A depthwise
convolution sums over its kernel window only, not over channels, so VNNI's four-wide int8 dot products have no
reduction to speed up in XNNPACK's channel-vectorised kernels, which widen int8 and multiply, then requantize.
Elementwise ``add``/``mul`` in int8 cost little themselves but need a quantize/dequantize (XNNPACK "Convert") on
every float neighbour.

How: ``select="auto"`` quantizes the network once per candidate set of kinds kept in float (:data:`CANDIDATES`),
lowers each to a ``.pte``, times the files in alternation in the ExecuTorch runtime on this machine, and keeps the
fastest; a candidate that keeps more in float must be at least :data:`MIN_GAIN` faster than the best so far, so
timing noise does not trade int8 arithmetic for nothing. Whole files are timed, not single operators, because the
converts an operator's type adds or saves sit in its neighbours. The measurement holds for the CPU it ran on: for a
phone, time the candidates there, or name the kinds with ``float_kinds``. Keeping an operator in float never costs
accuracy (it skips a rounding).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ExportError

logger = logging.getLogger(__name__)

KINDS = ("depthwise", "elementwise")
KIND_DESCRIPTIONS = {
    "depthwise": "depthwise convolutions",  # one input channel per group (channel multipliers included)
    "elementwise": "elementwise add/mul",
}
#: the sets ``auto`` times, in order of how much stays int8
CANDIDATES: tuple[frozenset[str], ...] = (frozenset(), frozenset({"depthwise"}),
                                          frozenset({"depthwise", "elementwise"}))
#: a candidate keeping more in float is taken only when it is at least this much faster than the best so far
MIN_GAIN = 0.03
SELECTS = ("auto", "all")

_CONVS = {torch.ops.aten.conv1d.default: 6, torch.ops.aten.conv2d.default: 6, torch.ops.aten.conv3d.default: 6,
          torch.ops.aten.convolution.default: 8}  # op -> position of ``groups`` in its arguments
_ELEMENTWISE = {torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor}


def _weight_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    weight = node.args[1] if len(node.args) > 1 else None
    if not isinstance(weight, torch.fx.Node):
        return None
    val = weight.meta.get("val")
    if val is None and weight.op == "get_attr":
        val = getattr(weight.graph.owning_module, str(weight.target), None)
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def op_kind(node: torch.fx.Node) -> str | None:
    """The selectable kind of a graph node (one of :data:`KINDS`), or ``None`` for everything else."""
    if node.op != "call_function":
        return None
    if node.target in _ELEMENTWISE:
        return "elementwise"
    where = _CONVS.get(node.target)
    if where is None:
        return None
    groups = node.args[where] if len(node.args) > where else node.kwargs.get("groups", 1)
    shape = _weight_shape(node)
    if groups > 1 and shape is not None and shape[1] == 1:
        return "depthwise"
    return None


def count_kinds(graph: torch.fx.GraphModule) -> Counter[str]:
    return Counter(k for n in graph.graph.nodes if (k := op_kind(n)) is not None)


def check_kinds(kinds: Iterable[str]) -> frozenset[str]:
    kinds = frozenset(kinds)
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise ExportError(f"unknown operator kind(s) to keep in float: {', '.join(unknown)}; "
                          f"choose from {', '.join(KINDS)}")
    return kinds


def label(kinds: Iterable[str]) -> str:
    """``"none"`` or the kinds joined by ``+`` (``depthwise+elementwise``): a candidate's name in reports."""
    return "+".join(k for k in KINDS if k in set(kinds)) or "none"


@dataclass
class Selection:
    """What ``auto`` chose: the kinds kept in float, how many nodes that is, and every candidate's latency."""

    float_kinds: frozenset[str]
    float_nodes: dict[str, int]
    candidate_ms: dict[str, float] = field(default_factory=dict)
    threads: int | None = None

    def summary(self) -> str:
        kept = ", ".join(f"{KIND_DESCRIPTIONS[k]} ({self.float_nodes.get(k, 0)})" for k in KINDS
                         if k in self.float_kinds) or "nothing"
        text = f"  kept in float: {kept}"
        if self.candidate_ms:
            times = ", ".join(f"{k} {v:.2f} ms" for k, v in self.candidate_ms.items())
            threads = self.threads or "default"
            text += (f"\n  candidates timed in the ExecuTorch runtime on this CPU (batch 1, {threads} thread(s)), "
                     f"named by what they keep in float: {times}")
        return text

    def to_dict(self) -> dict[str, object]:
        return {"float_kinds": [k for k in KINDS if k in self.float_kinds], "float_nodes": self.float_nodes,
                "candidate_ms": self.candidate_ms, "threads": self.threads}


def fastest(times: dict[frozenset[str], float], min_gain: float = MIN_GAIN) -> frozenset[str]:
    """The candidate to keep, walking ``times`` in order: a later one wins only if ``min_gain`` faster."""
    best = next(iter(times))
    for kinds, ms in times.items():
        if ms < times[best] * (1 - min_gain):
            best = kinds
    return best


def choose_float_kinds(quantize: Callable[[frozenset[str]], torch.fx.GraphModule],
                       lower: Callable[[torch.fx.GraphModule, Path], Path],
                       load: Callable[[Path], Callable[[Sequence[np.ndarray]], object]],
                       example: Sequence[np.ndarray], present: Iterable[str], keep: Path, *,
                       candidates: Sequence[frozenset[str]] = CANDIDATES, rounds: int = 20,
                       ) -> tuple[frozenset[str], torch.fx.GraphModule, dict[str, float]]:
    """Quantize and lower every candidate, time the files in alternation, write the winner's file to ``keep``
    (lowering is the slow step, so it is not repeated) and return the winner's kinds, its graph and every
    candidate's median latency (ms, by :func:`label`).

    ``present``: the kinds the network has. Candidates that differ only in kinds it lacks (a network without
    depthwise convolutions) would be the same file and are built once.
    """
    from zoo.bench import interleaved_latency

    present = frozenset(present)
    graphs: dict[frozenset[str], torch.fx.GraphModule] = {}
    runners: dict[frozenset[str], Callable[[], object]] = {}
    first_error: ExportError | None = None
    tried: list[frozenset[str]] = []
    with tempfile.TemporaryDirectory(prefix="zoo_pte_select_") as tmp:
        for kinds in candidates:
            if any(kinds & present == k & present for k in tried):
                continue
            tried.append(kinds)
            try:  # one candidate that cannot be lowered or loaded leaves the others to choose from
                graph = quantize(kinds)
                path = lower(graph, Path(tmp) / f"{label(kinds)}.pte")
                run = load(path)
            except ExportError as e:
                logger.warning("int8 .pte candidate keeping %s float failed: %s", label(kinds), e)
                first_error = first_error or e
                continue
            graphs[kinds] = graph
            runners[kinds] = lambda run=run: run(example)
        if not runners:
            raise first_error or ExportError("no int8 .pte candidate to time")
        times = interleaved_latency(runners, warmup=3, rounds=rounds, settle=1)
        best = fastest(times)
        partial = keep.with_name(keep.name + ".tmp")
        shutil.copyfile(Path(tmp) / f"{label(best)}.pte", partial)
        os.replace(partial, keep)
    return best, graphs[best], {label(k): round(v, 3) for k, v in times.items()}


__all__ = ["CANDIDATES", "KINDS", "MIN_GAIN", "SELECTS", "Selection", "check_kinds", "choose_float_kinds",
           "count_kinds", "fastest", "label", "op_kind"]
