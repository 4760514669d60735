"""ExecuTorch int8: PT2E quantization with the XNNPACK quantizer, lowered to an XNNPACK-delegated ``.pte``.

XNNPACK's int8 kernels are what most Android apps run, and ExecuTorch reaches them through PyTorch 2 export
quantization: ``torch.export`` captures the network, ``prepare_pt2e`` inserts observers where the XNNPACK quantizer
annotates (conv, linear, add, ...: symmetric int8, per-channel weights), calibration images run through it,
``convert_pt2e`` turns observers into quantize/dequantize pairs, and ``to_edge_transform_and_lower`` with the
XNNPACK partitioner fuses each ``dq -> op -> q`` pattern into an int8 XNNPACK kernel.

The file is checked in the ExecuTorch runtime like the fp32 ``.pte``, against the *quantized* PyTorch model
(``convert_pt2e``'s output, which computes the int8 arithmetic in float): the two differ only by rounding inside
the kernels, so a wrong lowering shows; agreement with the fp32 network is reported too, but the accuracy
question is answered on real data by ``zoo benchmark``.

Quantization-aware training (``zoo train ... train.qat=true``, ``zoo.quantization``) uses the same quantizer with
``is_qat=True``; its checkpoint is rebuilt and converted here (:func:`qat_quantized_graph`) exactly like a
calibrated graph, with the quantization parameters it learned.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.data.transforms import resolve_model_data_config
from zoo.errors import ExportError
from zoo.heads import get_task

from .executorch import _first_line, check_runtime_parity, load_pte, require_executorch, versions
from .parity import Batch, ParityReport, agreement, torch_outputs
from .pte_select import SELECTS, Selection, check_kinds, choose_float_kinds, count_kinds, op_kind
from .spec import ExportSpec, as_tuple, build_adapter
from .xnnpack_passes import restore_gelu

#: two roundings of one int8 graph differ from each other by up to about sqrt(2) times one's distance from fp32
INT8_NOISE_FACTOR = 1.5


@dataclass
class PteInt8Report:
    path: Path
    calibration: str
    calibration_samples: int
    vs_quantized_torch: ParityReport
    top1_agreement_with_fp32: float | None
    seconds: float
    selection: Selection | None = None  # None: quantized in training (QAT), nothing chosen here

    def summary(self) -> str:
        text = (f"int8 .pte (PT2E, XNNPACK quantizer; calibration: {self.calibration}) -> {self.path.name}\n"
                f"{self.vs_quantized_torch.summary()}")
        if self.selection is not None:
            text += f"\n{self.selection.summary()}"
        if self.top1_agreement_with_fp32 is not None:
            text += (f"\n  top-1 agreement with the fp32 network on the calibration images: "
                     f"{100 * self.top1_agreement_with_fp32:.2f}%")
        return text


def xnnpack_quantizer(qat: bool = False, float_kinds: frozenset[str] = frozenset()) -> Any:
    """XNNPACK's symmetric int8 scheme: per-channel weights, per-tensor activations (``is_qat``: fake-quant), with
    zero-valued constant pads sharing their input's quantization (:func:`share_constant_pad_qparams`); nodes of
    ``float_kinds`` (:mod:`export.pte_select`) are left unannotated, so they stay float."""
    require_executorch()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    class PadSharingXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return share_constant_pad_qparams(super().annotate(model))

    quantizer = PadSharingXNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    if float_kinds:
        quantizer.set_filter_function(lambda node: op_kind(node) not in float_kinds)
    return quantizer


def _is_zero_constant_pad(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target == torch.ops.aten.constant_pad_nd.default:
        return float(node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)) == 0.0
    if node.target == torch.ops.aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        return mode == "constant" and float(value or 0.0) == 0.0
    return False


def share_constant_pad_qparams(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Give every zero-valued constant pad its input's quantization, then let the views after it share it too.

    Why: XNNPACK's quantizer leaves pads unannotated, so a pad after a quantized op sits between a dequantize and
    the next op's own quantize; XNNPACK takes such a pad into its int8 partition and refuses it unless input and
    output share scale and zero point ("Failed to create StaticConstantPad node ... xnn_status_invalid_parameter",
    LWGANet's row shear). Zero is exactly representable in any symmetric or affine int8 scheme, so sharing is
    exact; pads with another value (a max pool's ``-inf``) are left alone."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import propagate_annotation
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY as key

    changed = False
    for node in model.graph.nodes:
        if not _is_zero_constant_pad(node) or key in node.meta:
            continue
        source = node.args[0]
        annotation = source.meta.get(key) if isinstance(source, torch.fx.Node) else None
        if annotation is None or annotation.output_qspec is None:
            continue
        shared = SharedQuantizationSpec(source)
        node.meta[key] = QuantizationAnnotation(input_qspec_map={source: shared}, output_qspec=shared,
                                                _annotated=True)
        changed = True
    if changed:
        propagate_annotation(model)  # the reshapes and slices after a pad now find an annotated producer
    return model


def capture(model: nn.Module, spec: ExportSpec) -> torch.fx.GraphModule:
    """The task adapter as a ``torch.export`` graph module (what PT2E quantization annotates), captured under the
    one export switch (:func:`export.onnx_export.exporting`: the models' graph-shaped paths, no data-dependent
    probes) with every weight-only computation folded to a constant.

    Why the folding: under the switch a model computes derived weights in the graph (EMOv2 folds each BatchNorm
    into its conv there; the ONNX exporter turns such subgraphs into initializers). Left in the graph, the XNNPACK
    quantizer would quantize a *computed* weight, XNNPACK cannot take a conv whose weight is computed, and the
    per-channel quantize/dequantize pairs fall to portable kernels ExecuTorch cannot run. torchao's
    ``constant_fold`` evaluates those subgraphs once, so every conv and linear sees a constant weight."""
    from torchao.quantization.pt2e.constant_fold import constant_fold

    from .onnx_export import exporting

    adapter = build_adapter(model.eval().float().cpu(), spec)
    try:
        with exporting(adapter):
            graph = torch.export.export(adapter, spec.example_inputs(1)).module()
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        raise ExportError(f"torch.export failed: {_first_line(e)}") from e
    with torch.no_grad():  # folded weights are plain constants, not results with autograd history
        constant_fold(graph)
    _give_constants_their_own_storage(graph)
    restore_gelu(graph)  # XNNPACK runs aten.gelu; the erf of the spelled-out form would leave its delegate
    return graph


def _give_constants_their_own_storage(graph: torch.fx.GraphModule) -> None:
    """Replace every tensor the graph holds that is a view into a larger storage (a folded slice such as EMOv2's
    ``w_qk[:C]`` / ``w_qk[C:]``) by a compact copy. ExecuTorch serialises a constant from the start of its storage,
    so two slices of one weight became the same tensor in the file: the fp32 ``.pte`` computed wrong logits (max
    abs diff ~4 at 64²)."""
    def compact(t: torch.Tensor) -> bool:
        return t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()

    for module in graph.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                if t is not None and not compact(t):
                    copy = t.detach().clone()
                    table[name] = nn.Parameter(copy, t.requires_grad) if isinstance(t, nn.Parameter) else copy
        for name, t in list(vars(module).items()):
            if isinstance(t, torch.Tensor) and not compact(t):
                setattr(module, name, t.detach().clone())


@torch.no_grad()
def quantize_pt2e(model: nn.Module, spec: ExportSpec, calibration: Batch, float_kinds: frozenset[str] = frozenset(),
                  captured: torch.fx.GraphModule | None = None) -> torch.fx.GraphModule:
    """Post-training int8: prepare with the XNNPACK quantizer, run the calibration images, convert.

    ``captured``: the network's :func:`capture`, when the caller already has it (prepare works on a copy)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = copy.deepcopy(captured) if captured is not None else capture(model, spec)
    prepared = prepare_pt2e(graph, xnnpack_quantizer(float_kinds=float_kinds))
    for i in range(len(calibration[0])):
        prepared(*(torch.from_numpy(np.ascontiguousarray(a[i:i + 1])) for a in calibration))
    return convert_pt2e(prepared)


def convert_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    # as in capture(): weights the graph computes (EMOv2's projection slices) reach XNNPACK only as constants; the
    # QAT graph is captured for training, so they are folded here, after conversion, quantization included
    with torch.no_grad():
        constant_fold(converted)
    return converted


class PerSample(nn.Module):
    """Run a graph captured at batch 1 over a batch, one sample at a time (outputs without a batch axis, such as
    detection anchors, are taken once): what the parity helpers need to compare it with the runtime."""

    def __init__(self, graph: nn.Module, spec: ExportSpec) -> None:
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        super().__init__()
        self.graph = allow_exported_model_train_eval(graph)  # so the parity helpers' .eval() is a no-op
        self.batchless = [spec.output_names.index(n) for n in spec.batchless_outputs]
        self.is_export_adapter = True

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = [as_tuple(self.graph(*(x[i:i + 1] for x in inputs))) for i in range(inputs[0].shape[0])]
        return tuple(parts[0] if k in self.batchless else torch.cat(parts, 0) for k, parts in enumerate(zip(*outs)))


def lower_quantized(quantized: torch.fx.GraphModule, path: str | os.PathLike, spec: ExportSpec) -> Path:
    """A converted PT2E graph -> XNNPACK-delegated ``.pte`` (int8 kernels where the quantizer annotated)."""
    # Not imported on purpose: executorch.kernels.quantized would let q/dq nodes that XNNPACK leaves outside its
    # partition (EMOv2) lower to portable kernels, but the portable quantize_per_channel then aborts the whole
    # process (it asserts float64 scales; PT2E gives float32). Refusing here keeps that an ExportError (a row).
    from .xnnpack_passes import lower_to_xnnpack

    path = Path(path)
    try:
        buffer = lower_to_xnnpack(quantized, spec.example_inputs(1))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ExecuTorch int8 lowering (XNNPACK) of {path.stem} failed: {_first_line(e)}") from e
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer)
    os.replace(tmp, path)
    return path


def to_pte_int8(model: nn.Module, path: str | os.PathLike, spec: ExportSpec, calibration: Batch, *,
                calibration_source: str = "images", quantized: torch.fx.GraphModule | None = None,
                threads: int | None = None, random_inputs: int = 0, select: str = "all",
                float_kinds: Iterable[str] | None = None) -> PteInt8Report:
    """Quantize (or take the QAT-``quantized`` graph), lower, and check the ``.pte`` in the ExecuTorch runtime.

    What stays float (:mod:`export.pte_select`): ``float_kinds`` names the kinds (``depthwise``, ``elementwise``);
    without it, ``select="auto"`` times the candidate files on this machine (``threads`` threads) and keeps the
    fastest, ``select="all"`` quantizes every node the XNNPACK quantizer annotates. A QAT graph is taken as trained.

    The check runs the calibration images (and ``random_inputs`` noise inputs) through the file and through the
    quantized PyTorch graph: the max abs diff must stay within 10% of the output range, or within
    ``INT8_NOISE_FACTOR`` times the quantized graph's own distance from the fp32 network, whichever is larger, and
    top-1 agreement at 90% or more; a wrong lowering is off by far more. Why the second bound: XNNPACK rounds
    inside its fused kernels where the reference graph rounds at every quantize node, so in a deep network the two
    differ by int8 noise of the size of int8's own error (LWGANet-L0 at 224² with probe weights: 14.7 between
    them, 12.4 from the quantized graph to fp32 and 13.5 from the file to fp32, on outputs up to 124). The file is
    renamed ``*.parity_failed.pte`` when it fails. Noise inputs are off by default: they drive activations outside the
    calibrated ranges, where XNNPACK (which fuses ops and clamps only at its own requantization points) and the
    reference graph (which clamps at every quantize node) part ways without either being wrong (a trained EMOv2-1M:
    0.50 on noise vs 0.16 on digits; EMOv2-1M at 224² with probe weights: top-1 agreement 50% on noise, 100% on the
    calibration images).
    """
    require_executorch()
    if spec.dynamic_batch:
        raise ExportError("--format pte writes a fixed batch of 1; drop --dynamic-batch")
    if select not in SELECTS:
        raise ExportError(f"unknown int8 .pte selection {select!r}; choose one of {', '.join(SELECTS)}")
    kinds = check_kinds(float_kinds or ())
    t0 = time.perf_counter()
    path, selection = Path(path), None
    if quantized is None:
        captured = capture(model, spec)
        present = count_kinds(captured)
        timed: dict[str, float] = {}
        if select == "auto" and float_kinds is None:
            kinds, quantized, timed = choose_float_kinds(
                lambda k: quantize_pt2e(model, spec, calibration, k, captured=captured),
                lambda graph, p: lower_quantized(graph, p, spec), lambda p: load_pte(p, threads),
                [a[:1] for a in calibration], present, path)
        else:
            quantized = quantize_pt2e(model, spec, calibration, kinds, captured=captured)
        selection = Selection(kinds, {k: present[k] for k in kinds}, timed, threads)
    if not selection or not selection.candidate_ms:
        path = lower_quantized(quantized, path, spec)
    reference = PerSample(quantized, spec)
    ref_out = torch_outputs(reference, calibration)
    scale = float(np.max(np.abs(ref_out[0]))) or 1.0
    fp32 = None
    atol = 0.1 * scale
    if not isinstance(model, PerSample):  # a QAT graph has no separate fp32 network
        fp32 = torch_outputs(build_adapter(model.eval(), spec), calibration)
        atol = max(atol, INT8_NOISE_FACTOR * float(np.max(np.abs(fp32[0] - ref_out[0]))))
    report = check_runtime_parity(reference, path, spec, load_pte(path, threads), images=calibration,
                                  n_random=random_inputs,
                                  atol=atol, min_agreement=0.9, label="int8 .pte vs PT2E int8 in PyTorch",
                                  raise_on_fail=False, noise_floor=False)
    if not report.passed:
        bad = path.with_name(f"{path.stem}.parity_failed{path.suffix}")
        os.replace(path, bad)
        raise ExportError(f"the int8 .pte does not match its quantized PyTorch graph:\n{report.summary()}\n"
                          f"the file was moved to {bad}")
    fraction = None
    if fp32 is not None:
        k = spec.output_names.index(spec.primary_output)
        agree, total = agreement(fp32[k], ref_out[k], spec.class_axis)
        fraction = agree / max(total, 1)
    return PteInt8Report(path, calibration_source, len(calibration[0]), report, fraction, time.perf_counter() - t0,
                         selection)


def is_qat_checkpoint(meta: dict[str, Any]) -> bool:
    """A checkpoint written by ``zoo train ... train.qat=true`` (its weights are a PT2E QAT graph's state)."""
    return bool(((meta.get("config") or {}).get("train") or {}).get("qat"))


def qat_quantized_graph(checkpoint: str | os.PathLike, meta: dict[str, Any]) -> torch.fx.GraphModule:
    """The int8 reference graph of a QAT checkpoint: :func:`qat_training_graph`, then ``convert_pt2e`` -- so the
    quantization parameters are the ones learned in training, not a new calibration."""
    return convert_qat(qat_training_graph(checkpoint, meta))


def qat_training_graph(checkpoint: str | os.PathLike, meta: dict[str, Any]) -> torch.fx.GraphModule:
    """A QAT checkpoint's fake-quantized graph, rebuilt exactly as ``train.qat`` built it (same model arguments,
    same capture) with its state loaded strictly; in eval mode (what ``zoo benchmark`` scores as its PyTorch row)."""
    from safetensors.torch import load_file

    import zoo
    from zoo.quantization import prepare_qat_model

    cfg = meta["config"]
    task = meta.get("task") or cfg.get("task", "classification")
    in_chans = int(meta.get("in_chans") or 3)
    model = zoo.create_model(meta["model"], task=task, head=meta.get("head"), num_classes=meta.get("num_classes"),
                             in_chans=in_chans, **dict(cfg.get("model", {}).get("kwargs") or {}))
    img_size = int(cfg["data"]["img_size"])
    prepared = prepare_qat_model(model, task, in_chans, img_size)
    # the first training-mode call of a prepared graph can drop observer modules (an EMOv2 graph captured in its
    # eager form lost 9 of 266), and the checkpoint was saved after training: one call here gives the same set;
    # the strict load below then overwrites every statistic that call touched
    prepared.train()
    with torch.no_grad():
        prepared(*(torch.zeros(2, in_chans, img_size, img_size) for _ in get_task(task).input_names))
    try:
        prepared.load_state_dict(load_file(str(checkpoint)), strict=True)
    except RuntimeError as e:
        raise ExportError(f"{Path(checkpoint).name}: the QAT graph rebuilt here does not match the checkpoint's "
                          f"({_first_line(e)})") from e
    prepared.eval()  # the exported-model train/eval override returns None, not the module
    return prepared


def export_pte_int8(checkpoint: str | os.PathLike, path: str | os.PathLike, *, calib_limit: int = 64,
                    select: str = "auto", threads: int | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """``zoo benchmark``'s ``int8.pte`` row: a checkpoint -> int8 ``.pte`` with its sidecar.

    Calibration draws from the checkpoint's training split (:func:`export.evaluate.training_calibration`), else
    synthetic images (the sidecar says which). A checkpoint fine-tuned with ``train.qat=true`` carries its QAT
    graph's observers in its weights and is converted from them (:func:`qat_quantized_graph`).

    ``select="auto"`` (the default: on every network measured it was faster than quantizing everything, see
    :mod:`export.pte_select`) keeps in float the operator kinds whose int8 kernels lose on this machine, timed with
    ``threads`` threads; the sidecar records what stayed float and every candidate's latency.
    """
    import zoo

    from .calib import synthetic_calibration
    from .evaluate import training_calibration
    from .metadata import preprocessing, write_sidecar
    from .pipeline import _base_fields, _output_shapes, load_model
    from .spec import build_spec, normalize_input_size

    meta = zoo.read_metadata(checkpoint) or {}
    quantized = None
    if is_qat_checkpoint(meta):
        quantized = qat_quantized_graph(checkpoint, meta)
        name, task = f"{meta['model']}_{Path(checkpoint).stem}", meta.get("task", "classification")
        size = normalize_input_size(meta["input_size"][1:], int(meta.get("in_chans") or 3))
        spec = build_spec(task, size, False)
        model = PerSample(quantized, spec)  # the QAT graph is the PyTorch reference of its own int8 file
        pre = preprocessing(resolve_model_data_config(meta["model"], task, meta.get("data_config")))
    else:
        model, meta, name, task = load_model(str(checkpoint))
        task = task or "classification"
        pre = preprocessing(model)  # load_model put the checkpoint's data config on the model
        size = normalize_input_size(pre["default_input_size"][1:], int(meta.get("in_chans") or 3))
        spec = build_spec(task, size, False, model)
    found = training_calibration(meta, size, len(spec.input_names), limit=calib_limit)
    if found is not None:
        calibration, source = found
    else:
        normalises_itself = get_task(task).data_rules.get("normalize_in_model", False)
        norm = (None, None) if normalises_itself else (pre["mean"], pre["std"])
        calibration, source = synthetic_calibration(size, len(spec.input_names), 16, *norm), "synthetic"
    if quantized is not None:  # the images only check the file; the quantization comes from training
        source = f"learned in quantization-aware training (checked on {source})"
    log(f"int8 .pte calibration: {source}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    report = to_pte_int8(model, path, spec, calibration, calibration_source=source, quantized=quantized,
                         select=select, threads=threads)
    log(report.summary())
    base = _base_fields(model, meta, name, task, spec, pre, None, _output_shapes(model, spec))
    write_sidecar(report.path, {
        **base, "exporter": "torch.export -> PT2E (XNNPACKQuantizer) -> to_edge_transform_and_lower (XNNPACK)",
        "runtime": "ExecuTorch (XNNPACK delegate, int8)", "runtime_versions": versions(),
        "quantization": {"scheme": "PT2E XNNPACK symmetric int8, per-channel weights",
                         "calibration": source, "calibration_samples": report.calibration_samples,
                         "top1_agreement_with_fp32": report.top1_agreement_with_fp32,
                         "kept_float": report.selection.to_dict() if report.selection else None},
        "parity": report.vs_quantized_torch.to_dict()})
    return report.path


__all__ = ["PerSample", "PteInt8Report", "capture", "convert_qat", "export_pte_int8", "is_qat_checkpoint",
           "lower_quantized", "qat_quantized_graph", "qat_training_graph", "quantize_pt2e",
           "share_constant_pad_qparams", "to_pte_int8", "xnnpack_quantizer"]
