"""Graph rewrites that keep a captured network inside XNNPACK's delegate instead of ExecuTorch's portable kernels.

Every node the ``XnnpackPartitioner`` cannot take splits the delegate: the node runs in a portable kernel (plain
loops), and each split adds a layout conversion in and out of XNNPACK's NHWC. A split costs the same in the fp32 and
the int8 file, so it also hides what int8 gains. Two splits come from how graphs are spelled, not from what they
compute, and are undone here:

* erf-GELU spelled out (``x * (erf(x / sqrt(2)) + 1) * 0.5``, the form the models take under the export switch so
  that onnxruntime fuses it) -> ``aten.gelu``, which XNNPACK runs; ``erf`` it does not.
* ``matmul`` of batched (4-D) operands decomposes into ``expand -> view -> bmm``; when the operands already have
  their broadcast shape the ``expand_copy`` is an identity, which XNNPACK does not take. It is dropped.

One split is an operator XNNPACK's ExecuTorch partitioner has no rule for: ``layer_norm`` (EMOv2's stages 3-4).
Over the last axis it is two averages and elementwise ops, and an average over the last axis is a ``linear`` with a
constant ``1/C`` weight, so :func:`decompose_layer_norm` spells it with ops XNNPACK runs. In an int8 graph the
layer norm is not quantized (the XNNPACK quantizer leaves it in float between dequantize and quantize), and the
decomposition is applied after conversion, so it stays in float inside the delegate.
"""

from __future__ import annotations

import math

import torch

_SQRT2 = math.sqrt(2.0)


def _scalar(node: object, value: float) -> bool:
    return isinstance(node, (int, float)) and math.isclose(float(node), value, rel_tol=1e-6)


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _gelu_input(erf: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """``(x, last node)`` when ``erf`` is the core of ``x * (erf(x / sqrt(2)) + 1) * 0.5`` (any operand order)."""
    aten = torch.ops.aten
    scaled = erf.args[0]
    if not isinstance(scaled, torch.fx.Node) or len(scaled.users) != 1:
        return None
    if scaled.target == aten.div.Tensor and _scalar(scaled.args[1], _SQRT2):
        x = scaled.args[0]
    elif scaled.target == aten.mul.Tensor and _scalar(scaled.args[1], 1 / _SQRT2):
        x = scaled.args[0]
    else:
        return None
    plus_one = _only_user(erf)
    if plus_one is None or plus_one.target != aten.add.Tensor or not _scalar(plus_one.args[1], 1.0):
        return None
    times_x = _only_user(plus_one)
    if times_x is None or times_x.target != aten.mul.Tensor or set(times_x.args) != {x, plus_one}:
        return None
    half = _only_user(times_x)
    if half is None or half.target != aten.mul.Tensor or not _scalar(half.args[1], 0.5):
        return None
    return x, half


def restore_gelu(graph: torch.fx.GraphModule) -> int:
    """Replace each spelled-out erf-GELU in an ATen graph by ``aten.gelu`` (exact, not tanh). Returns how many."""
    found = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.erf.default:
            continue
        match = _gelu_input(node)
        if match is None:
            continue
        x, last = match
        with graph.graph.inserting_after(last):
            gelu = graph.graph.call_function(torch.ops.aten.gelu.default, (x,))
        gelu.meta.update({k: v for k, v in last.meta.items() if k in ("val", "tensor_meta", "stack_trace")})
        last.replace_all_uses_with(gelu)
        found += 1
    if found:
        graph.graph.eliminate_dead_code()
        graph.recompile()
    return found


def decompose_layer_norm(graph: torch.fx.GraphModule) -> int:
    """Rewrite each ``aten.layer_norm`` over the last axis as ``mean = linear(x, 1/C)``, ``d = x - mean``,
    ``y = d * rsqrt(linear(d * d, 1/C) + eps) * weight + bias``. Returns how many were rewritten."""
    aten = torch.ops.aten
    g = graph.graph
    averagers: dict[int, torch.fx.Node] = {}  # one constant 1/C weight per channel count
    found = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target != aten.layer_norm.default:
            continue
        x, shape = node.args[0], list(node.args[1])
        weight = node.args[2] if len(node.args) > 2 else None
        bias = node.args[3] if len(node.args) > 3 else None
        eps = float(node.args[4]) if len(node.args) > 4 else 1e-5
        if len(shape) != 1:  # layer_norm normalises its last len(shape) axes; one axis is a linear's reduction
            continue
        channels = int(shape[0])
        if channels not in averagers:
            name = f"_xnnpack_layer_norm_average_{channels}"
            graph.register_buffer(name, torch.full((1, channels), 1.0 / channels))
            with g.inserting_before(next(iter(g.nodes))):
                averagers[channels] = g.get_attr(name)
        average = averagers[channels]
        with g.inserting_before(node):
            mean = g.call_function(aten.linear.default, (x, average))
            centred = g.call_function(aten.sub.Tensor, (x, mean))
            var = g.call_function(aten.linear.default, (g.call_function(aten.mul.Tensor, (centred, centred)),
                                                        average))
            inv = g.call_function(aten.rsqrt.default, (g.call_function(aten.add.Tensor, (var, eps)),))
            out = g.call_function(aten.mul.Tensor, (centred, inv))
            if weight is not None:
                out = g.call_function(aten.mul.Tensor, (out, weight))
            if bias is not None:
                out = g.call_function(aten.add.Tensor, (out, bias))
        node.replace_all_uses_with(out)
        g.erase_node(node)
        found += 1
    if found:
        g.lint()
        graph.recompile()
    return found


def drop_identity_expands(graph: torch.fx.GraphModule) -> torch.fx.passes.infra.pass_base.PassResult:
    """An ExecuTorch edge transform pass: remove ``expand_copy`` nodes whose output shape is their input's."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    expand = exir_ops.edge.aten.expand_copy.default
    changed = False
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target != expand:
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and "val" in source.meta and "val" in node.meta
                and tuple(source.meta["val"].shape) == tuple(node.meta["val"].shape)):
            node.replace_all_uses_with(source)
            graph.graph.erase_node(node)
            changed = True
    if changed:
        graph.recompile()
    return PassResult(graph, changed)


def lower_to_xnnpack(graph: torch.fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> bytes:
    """A captured (or PT2E-converted) graph -> the bytes of an XNNPACK-delegated ``.pte``, with the rewrites above.
    ``graph`` itself is left as it is (callers keep it as their PyTorch reference)."""
    import copy

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    graph = copy.deepcopy(graph)
    decompose_layer_norm(graph)
    with torch.no_grad():
        program = torch.export.export(graph, example_inputs)
    edge = to_edge_transform_and_lower(program, transform_passes=[drop_identity_expands],
                                       partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer


__all__ = ["decompose_layer_norm", "drop_identity_expands", "lower_to_xnnpack", "restore_gelu"]
