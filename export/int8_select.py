"""Profile-guided selective int8: quantize a node only where onnxruntime's int8 kernel beats its float one.

Why: on CPUs without VNNI/AVX-512 (AVX2 + FMA), onnxruntime's int8 kernels are not uniformly faster than float
ones. Per-node profiles of whole models (printed by ``zoo export --int8 --int8-select auto`` and
``benchmarks/export_latency.py --int8-both``) showed, e.g., LWGANet's downsampling
convolutions (grouped 3x3 with two output channels per group: neither the depthwise nor the GEMM fast path of
``QLinearConv``) taking 20-50 ms each in int8 against 0.3-0.8 ms in float, and ``QLinearSoftmax`` /
``QLinearMatMul`` in EMOv2's attention slower than the float ops. A QDQ model quantized everywhere therefore ran
*slower* than fp32 for LWGANet.

How: quantize everything once (QDQ), then run the pre-processed float model and the QDQ model whole, in
alternation, with onnxruntime's profiler on, on one calibration image; every kernel of each optimised graph is
attributed to the original node it came from (onnxruntime names fused kernels after the node or its output:
``<node>_token_N``, ``<node>_output_0_nchwc``), so each quantized compute node gets a float and an int8 kernel time
measured in context (QLinearConv in its NHWC chain, Conv in its NCHWc chain, with whatever fusions the optimiser
made). A node whose int8 kernel is clearly slower (:func:`choose_excluded`) goes to ``nodes_to_exclude`` and the
model is quantized again. Micro-benchmarks of single nodes were tried first and misled: a lone MaxPool runs as a
float NCHW pool between Q/DQ, in the whole graph as a uint8 NhwcMaxPool.

Data-movement ops (Reshape, Transpose, Slice, ...) are not candidates: onnxruntime runs them on whatever type
their neighbours give them.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ops that only move bytes: they follow their neighbours' type, timing them says nothing about int8 arithmetic
DATA_MOVEMENT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Pad",
                           "Gather", "Identity", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Cast"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose"})


@dataclass
class NodeTiming:
    """One quantized compute node: median kernel time (ms) per run in the float and the int8 model."""

    name: str
    op_type: str
    fp32_ms: float
    int8_ms: float
    int8_kernel: str  # what onnxruntime ran for it in int8 (QLinearConv, ...), or the float op when unfused
    fp32_kernel: str = ""  # what it ran in float: another op when fused (a layer-scale Mul folded into a Conv)

    @property
    def speedup(self) -> float:
        return self.fp32_ms / max(self.int8_ms, 1e-9)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "op_type": self.op_type, "fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms,
                "int8_kernel": self.int8_kernel,
                "fp32_kernel": self.fp32_kernel}


def candidates(qdq_model) -> list[str]:  # qdq_model: onnx.ModelProto
    """Names of the compute nodes that the QDQ model runs in int8: every input from a ``DequantizeLinear``
    (or a constant) and every output into a ``QuantizeLinear`` -- the pattern onnxruntime fuses."""
    graph = qdq_model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    out = []
    for n in graph.node:
        if n.op_type in QDQ_OPS or n.op_type in DATA_MOVEMENT or len(n.output) != 1:
            continue
        fed = [producer[i] for i in n.input if i in producer]
        if not fed or not any(p.op_type == "DequantizeLinear" for p in fed):
            continue
        users = consumers.get(n.output[0], [])
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            out.append(n.name)
    return out


def _run_profiled(paths: list[str | os.PathLike], feed: dict[str, np.ndarray], threads: int, rounds: int,
                  warmup: int, tmp: str) -> list[dict[str, dict[str, float]]]:
    """Per model: ``{profiler node name: {"op": op, "ms": median kernel ms}}``, the models run in alternation."""
    import onnxruntime as ort

    sessions = []
    for k, path in enumerate(paths):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, f"profile{k}")
        opts.log_severity_level = 3
        sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
    for _ in range(warmup + rounds):  # alternate, so load on a shared machine hits every model alike
        for s in sessions:
            s.run(None, feed)
    out = []
    for s in sessions:
        file = s.end_profiling()
        with open(file) as f:
            events = json.load(f)
        os.remove(file)
        starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        first = starts[warmup] if len(starts) > warmup else 0
        per: dict[str, list[float]] = collections.defaultdict(list)
        ops: dict[str, str] = {}
        for e in events:
            name = e.get("name", "")
            if e.get("cat") == "Node" and name.endswith("_kernel_time") and e["ts"] >= first:
                node = name[: -len("_kernel_time")]
                per[node].append(e["dur"] / 1000)
                ops[node] = e.get("args", {}).get("op_name", "")
        out.append({n: {"op": ops[n], "ms": float(np.median(v))} for n, v in per.items()})
    return out


def _owner(profiled_name: str, names_by_length: list[str]) -> str | None:
    """The original node a kernel of the optimised graph belongs to: onnxruntime names fused and re-laid-out
    kernels after the node (``<name>_token_7``, ``fused <name>``) or its output (``<name>_output_0_nchwc``,
    ``<name>/QuickGeluFusion/``). Longest original name that occurs followed by ``_``, ``/`` or the end."""
    for n in names_by_length:
        i = profiled_name.find(n)
        while i >= 0:
            j = i + len(n)
            if j == len(profiled_name) or profiled_name[j] in "_/":
                return n
            i = profiled_name.find(n, i + 1)
    return None


@dataclass
class GraphProfile:
    """Kernel times of the float model and its all-int8 QDQ twin, per original node and in total."""

    timings: list[NodeTiming]
    fp32_total_ms: float
    int8_total_ms: float
    int8_qdq_ms: float  # QuantizeLinear/DequantizeLinear kernels that stayed in the optimised int8 graph
    by_op: dict[str, tuple[int, float]]  # int8 graph: kernel op -> (count, ms)
    fp32_by_op: dict[str, tuple[int, float]]


def profile_nodes(fp32_path: str | os.PathLike, qdq_path: str | os.PathLike, feed: dict[str, np.ndarray], *,
                  threads: int = 2, rounds: int = 10, warmup: int = 3) -> GraphProfile:
    """Profile the pre-processed float model and the QDQ model quantized from it (so node names match) as whole
    graphs, as onnxruntime optimises and runs them, and attribute every kernel to its original node."""
    import onnx

    fp32_model = onnx.load(str(fp32_path), load_external_data=False)
    qdq_model = onnx.load(str(qdq_path), load_external_data=False)
    names = candidates(qdq_model)
    op_type = {n.name: n.op_type for n in fp32_model.graph.node}
    pool = sorted({n.name for n in fp32_model.graph.node if n.name}, key=len, reverse=True)
    with tempfile.TemporaryDirectory() as tmp:
        f_prof, q_prof = _run_profiled([fp32_path, qdq_path], feed, threads, rounds, warmup, tmp)

    by_name = {n.name: n for n in fp32_model.graph.node}
    producer = {o: n for n in fp32_model.graph.node for o in n.output}

    def fused_source(owner: str, kernel_op: str) -> str:
        """A float kernel named after a later node it absorbed (Conv+BN+Relu is named ``<relu>_output_0_nchwc``):
        walk back along first inputs to the node of the kernel's own type."""
        node = by_name.get(owner)
        for _ in range(3):
            if node is None or node.op_type == kernel_op or not node.input:
                break
            node = producer.get(node.input[0])
        return node.name if node is not None and node.op_type == kernel_op else owner

    def attribute(prof: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, set[str]]]:
        ms: dict[str, float] = collections.defaultdict(float)
        kernels: dict[str, set[str]] = collections.defaultdict(set)
        for pname, ev in prof.items():
            if ev["op"] in QDQ_OPS or ev["op"] in LAYOUT_OPS:
                continue
            owner = _owner(pname, pool)
            if owner is not None:
                owner = fused_source(owner, ev["op"])
                ms[owner] += ev["ms"]
                kernels[owner].add(ev["op"])
        return ms, kernels

    f_ms, f_kernels = attribute(f_prof)
    q_ms, q_kernels = attribute(q_prof)
    timings = [NodeTiming(n, op_type.get(n, "?"), f_ms[n], q_ms[n], "+".join(sorted(q_kernels[n])),
                          "+".join(sorted(f_kernels[n])))
               for n in names if n in f_ms and n in q_ms]

    def by_op(prof: dict[str, dict[str, float]]) -> dict[str, tuple[int, float]]:
        acc: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
        for ev in prof.values():
            acc[ev["op"]][0] += 1
            acc[ev["op"]][1] += ev["ms"]
        return {k: (int(v[0]), float(v[1])) for k, v in acc.items()}

    return GraphProfile(timings, sum(e["ms"] for e in f_prof.values()), sum(e["ms"] for e in q_prof.values()),
                        sum(e["ms"] for e in q_prof.values() if e["op"] in QDQ_OPS), by_op(q_prof), by_op(f_prof))


def choose_excluded(timings: list[NodeTiming], margin: float = 0.1, min_ms: float = 0.01) -> list[str]:
    """Nodes to keep in float: those whose int8 kernel is slower than their float kernel by more than ``margin``
    (relative) and ``min_ms`` (absolute). Why the slack: per-node times of a few microseconds are noisy, and a node
    taken out of int8 puts a DequantizeLinear/QuantizeLinear pair around itself, so a tie is better left int8."""
    return [t.name for t in timings if t.int8_ms > (1 + margin) * t.fp32_ms and t.int8_ms - t.fp32_ms > min_ms]


def summary_table(profile: GraphProfile, excluded: list[str] | None = None, top: int = 12) -> str:
    """What the profile says, as text: totals, per-op-type kernel times of the candidates, and the nodes where int8
    loses most. An fp32 kernel of another op type means onnxruntime fused the float node into it (a Conv carrying
    the layer-scale Mul after it is reported under that Mul), so that row holds both ops' float time."""
    timings = profile.timings
    by: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, 0.0, set(), set()])
    for t in timings:
        row = by[t.op_type]
        row[0] += 1
        row[1] += t.fp32_ms
        row[2] += t.int8_ms
        row[3].add(t.int8_kernel)
        row[4].add(t.fp32_kernel)
    best = sum(min(t.fp32_ms, t.int8_ms) for t in timings)
    rest = profile.fp32_total_ms - sum(t.fp32_ms for t in timings)
    lines = [f"kernel time per run: fp32 {profile.fp32_total_ms:.2f} ms, "
             f"int8 everywhere {profile.int8_total_ms:.2f} ms "
             f"(of which Q/DQ {profile.int8_qdq_ms:.2f} ms) = {profile.fp32_total_ms / profile.int8_total_ms:.2f}x; "
             f"bound with the faster kernel per node and free Q/DQ: {profile.fp32_total_ms / (best + rest):.2f}x",
             "", "op type | nodes | fp32 kernel ms | int8 kernel ms | fp32/int8 | fp32 kernels | int8 kernels"]
    for op, (n, f, q, kernels, f_kernels) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{op} | {n} | {f:.2f} | {q:.2f} | {f / max(q, 1e-9):.2f}x | {', '.join(sorted(f_kernels))} | "
                     f"{', '.join(sorted(kernels))}")
    worst = sorted(timings, key=lambda t: t.fp32_ms - t.int8_ms)[:top]
    lines += ["", "node | int8 kernel | fp32 ms | int8 ms | fp32/int8 | kept in float"]
    skip = set(excluded or ())
    lines += [f"{t.name} | {t.int8_kernel} | {t.fp32_ms:.3f} | {t.int8_ms:.3f} | {t.speedup:.2f}x | "
              f"{'yes' if t.name in skip else 'no'}" for t in worst]
    return "\n".join(lines)


def write_timings(timings: list[NodeTiming], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps([t.to_dict() for t in timings], indent=1))
