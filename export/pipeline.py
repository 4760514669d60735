"""The whole export job behind ``zoo export``: model -> ONNX -> parity -> [int8] -> [.ort] -> sidecars.

Every file this writes has passed a parity check against PyTorch (fp32 files: max abs diff within tolerance and
100% top-1 agreement; int8 files: agreement with fp32 reported, since int8 is lossy by design). A file that fails
its check is renamed ``<name>.parity_failed.<ext>`` (kept for debugging, but never at the path an app would load)
and :class:`zoo.errors.ExportError` carries the report.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

import zoo
from zoo.data.transforms import resolve_data_config
from zoo.errors import ExportError
from zoo.heads import task_class

from .calib import load_calibration, synthetic_calibration
from .metadata import io_description, preprocessing, write_sidecar
from .mobile import OrtConversion, to_ort
from .onnx_export import (
    DEFAULT_OPSET,
    EXPORTERS,
    ExporterFailed,
    ModelDoesNotRun,
    OnnxExport,
    exporter_order,
    to_onnx,
    try_exporters,
)
from .parity import Batch, ParityReport, ParitySet, check_parity, compare_files, torch_outputs
from .quantize import QuantReport, quantize_int8
from .spec import ExportSpec, build_adapter, normalize_input_size, resolve_task

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "ort", "pte", "tflite")
#: formats written by an optional runtime instead of ONNX (export.executorch, export.tflite); no .onnx is written
RUNTIME_FORMATS = ("pte", "tflite")


@dataclass
class ExportResult:
    """Everything one export produced; ``files`` lists every model file written (each has a ``.json`` sidecar)."""

    name: str
    task: str
    onnx: OnnxExport | None  # None for --format pte / tflite, which do not go through ONNX
    parity: list[ParityReport] = field(default_factory=list)
    quant: QuantReport | None = None
    ort: OrtConversion | None = None
    ort_int8: OrtConversion | None = None
    ort_int8_vs_onnx: ParitySet | None = None
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        ex = self.onnx
        if ex is None:
            lines = [f"exported {self.name} ({self.task}) to {self.files[0].suffix} with torch.export"]
        else:
            lines = [f"exported {self.name} ({self.task}) with the {ex.exporter} exporter, opset {ex.opset}"
                     + (f" (fallback: {ex.fallback_reason})" if ex.fallback_reason else "")]
        lines += [p.summary() for p in self.parity]
        if self.quant:
            lines.append(self.quant.summary())
        if self.ort_int8_vs_onnx:
            s = self.ort_int8_vs_onnx
            lines.append(f"int8 .ort vs int8 .onnx: max abs diff {max(s.max_abs_diff.values()):.2e}, "
                         f"top-1 agreement {100 * s.agreement:.2f}% ({s.agree}/{s.total})")
        if self.ort:
            lines.append(f"reduced-build operator config: {self.ort.config_path.name}")
        lines += [f"wrote {p}" for p in self.files]
        return "\n".join(lines)


def _looks_like_path(source: str) -> bool:
    return os.sep in source or source.endswith((".safetensors", ".pth", ".pt", ".bin", ".ckpt"))


def load_model(source: str | nn.Module, *, model_name: str | None = None, task: str | None = None,
               head: str | None = None, num_classes: int | None = None, pretrained: bool | str = False,
               ) -> tuple[nn.Module, dict[str, Any], str, str | None]:
    """(model in eval mode, checkpoint metadata, name, task) for a model name, a checkpoint file or a module.

    ``task`` stays ``None`` when neither the caller nor the checkpoint names one: the exporter infers it.
    """
    if isinstance(source, nn.Module):
        return source.eval(), {}, model_name or type(source).__name__.lower(), task
    meta: dict[str, Any] = {}
    if Path(source).is_file():
        meta = zoo.read_metadata(source) or {}
        name = model_name or meta.get("model")
        if not name:
            raise ExportError(f"{source!r} has no LightZoo sidecar naming its model; pass --model NAME")
        task = task or meta.get("task")
        model = zoo.create_model(name, checkpoint_path=source, task=task, head=head,
                                 num_classes=num_classes)
        from zoo.peft import merge_lora

        model = merge_lora(model)  # an adapter checkpoint exports as plain weights: no LoRA ops in the graph
        return model.eval(), meta, f"{name}_{Path(source).stem}", task
    if _looks_like_path(source):
        raise ExportError(f"checkpoint file {source!r} does not exist")
    model = zoo.create_model(source, pretrained=pretrained, task=task, head=head,
                             num_classes=num_classes)
    return model.eval(), meta, source, task


def _class_names(model: nn.Module, meta: dict[str, Any]) -> list[str] | None:
    names = meta.get("class_names") or meta.get("classes")
    return list(names) if names else None


def _num_classes(model: nn.Module, meta: dict[str, Any]) -> int | None:
    n = meta.get("num_classes", getattr(model, "num_classes", None))
    return int(n) if n is not None else None


def _fail(path: Path, report: str) -> ExportError:
    bad = path.with_name(f"{path.stem}.parity_failed{path.suffix}")
    os.replace(path, bad)
    return ExportError(f"{report}\nthe file was moved to {bad} so that nothing loads it by mistake")


def preferred_exporter(model: nn.Module) -> str:
    """The exporter ``export_model`` uses when none is given: the model's ``preferred_onnx_exporter`` (LightM-UNet:
    legacy, whose scan export takes seconds instead of minutes) or the dynamo exporter for everything else."""
    choice = getattr(model, "preferred_onnx_exporter", "dynamo")
    return choice if choice in EXPORTERS else "dynamo"


def export_model(
    source: str | nn.Module,
    out_dir: str | os.PathLike,
    *,
    format: str = "onnx",  # noqa: A002 - the CLI's word
    model_name: str | None = None,
    name: str | None = None,
    task: str | None = None,
    head: str | None = None,
    num_classes: int | None = None,
    pretrained: bool | str = False,
    input_size: int | Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    exporter: str | None = None,
    fallback: bool = True,
    simplify: bool | None = None,
    atol: float | None = None,
    n_random: int = 4,
    int8: bool = False,
    int8_mode: str = "static",
    int8_select: str = "all",
    calib: str | os.PathLike | None = None,
    calib_limit: int = 64,
    target_platform: str | None = None,
    latency_rounds: int = 20,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a model name, a checkpoint (``.safetensors`` with sidecar, or an official file with ``model_name``)
    or an ``nn.Module`` to ``out_dir``; see the module docstring and ``zoo export --help`` for the options."""
    log = log or logger.info
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if format in RUNTIME_FORMATS:
        _runtime_module(format)  # a missing extra fails here, before the model is built
        if int8 or dynamic_batch:
            raise ExportError(f"--format {format} writes a float32 graph with a fixed batch of 1; --int8 and "
                              "--dynamic-batch are for onnx/ort")
    model, meta, default_name, task = load_model(source, model_name=model_name, task=task, head=head,
                                                 num_classes=num_classes, pretrained=pretrained)
    task = resolve_task(model, task)
    data_config = resolve_data_config(model)
    in_chans = int(data_config["input_size"][0])
    size = normalize_input_size(input_size if input_size is not None else data_config["input_size"][1:], in_chans)
    if len(size) == 3:
        data_config["input_size"] = size  # the sidecar's recipe is for the exported size
    n_inputs = len(task_class(model, task).input_names)
    exporter = exporter or preferred_exporter(model)
    name = name or default_name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    images: Batch | None = None
    if calib is not None:
        if len(size) != 3:
            raise ExportError("--calib reads 2D images; volumetric models (input C,D,H,W) calibrate on synthetic data")
        images = load_calibration(calib, data_config, n_inputs, limit=calib_limit)
        log(f"calibration images: {len(images[0])} from {calib}")
    norm = (None, None) if data_config["normalize_in_model"] else (data_config["mean"], data_config["std"])
    pre = preprocessing(data_config)

    if format in RUNTIME_FORMATS:
        return _export_runtime(format, model, meta, name, task, size, pre, out / f"{name}.{format}", images,
                               n_random, atol)
    ex, parity = export_onnx_verified(model, out / f"{name}.onnx", size, task=task, dynamic_batch=dynamic_batch,
                                      opset=opset, exporter=exporter, fallback=fallback, simplify=simplify,
                                      in_chans=in_chans, images=images, n_random=n_random, atol=atol)
    spec = ex.spec
    scale = parity.sets[0].max_abs_ref[spec.primary_output]  # not detection's anchors (hundreds of pixels)
    if scale < 10 * parity.atol:
        warnings.warn(f"the model's outputs are tiny (max |output| {scale:.1e}, as in an untrained network), so a "
                      f"tolerance of {parity.atol:.0e} cannot tell a right graph from a wrong one; export trained "
                      "weights (or see export.probe.make_informative)", stacklevel=2)
    result = ExportResult(name, task, ex, parity=[parity])
    base = _base_fields(model, meta, name, task, spec, pre, ex, _output_shapes(model, spec))
    result.files.append(ex.path)
    write_sidecar(ex.path, {**base, "parity": parity.to_dict()})

    if int8:
        calibration = images
        source_desc = f"{len(images[0])} images from {calib}" if images is not None else ""
        if calibration is None:  # the checkpoint's own training images, when it names a dataset
            from .evaluate import training_calibration

            found = training_calibration(meta, size, len(spec.input_names), limit=calib_limit)
            if found is not None:
                calibration, source_desc = found
                log(f"calibration images: {source_desc}")
        if calibration is None:
            warnings.warn("no --calib folder given and the checkpoint names no dataset: int8 calibration runs on "
                          "synthetic images, whose activation ranges differ from real photos; accuracy of the int8 "
                          "model is only indicative", stacklevel=2)
            calibration = synthetic_calibration(size, len(spec.input_names), 16, *norm)
            source_desc = "synthetic"
        int8_path = out / f"{name}.int8.onnx"
        q = quantize_int8(ex.path, int8_path, spec, calibration, mode=int8_mode, calibration_source=source_desc,
                          select=int8_select, latency_rounds=latency_rounds)
        result.quant = q
        result.files.append(int8_path)
        write_sidecar(int8_path, {**base, "quantization": q.to_dict(), "parity": parity.to_dict(),
                                  "parity_note": "parity figures are those of the fp32 model this was quantized "
                                                 "from; see quantization for agreement with fp32"})

    if format == "ort":
        conv = to_ort(ex.path, out, target_platform=target_platform)
        result.ort = conv
        ort_parity = check_parity(model, conv.ort_path, spec, images=images, n_random=n_random, atol=atol,
                                  label="fp32 .ort", raise_on_fail=False)
        result.parity.append(ort_parity)
        if not ort_parity.passed:
            raise _fail(conv.ort_path, f"the .ort model does not match PyTorch:\n{ort_parity.summary()}")
        result.files.append(conv.ort_path)
        ort_fields = {"required_operators_config": conv.config_path.name, "target_platform": target_platform}
        write_sidecar(conv.ort_path, {**base, **ort_fields, "parity": ort_parity.to_dict()})
        if result.quant is not None:
            conv8 = to_ort(result.quant.path, out, target_platform=target_platform)
            result.ort_int8 = conv8
            batch = images if images is not None else synthetic_calibration(size, len(spec.input_names), 16, *norm)
            result.ort_int8_vs_onnx = compare_files(result.quant.path, conv8.ort_path, spec, batch)
            result.files.append(conv8.ort_path)
            s = result.ort_int8_vs_onnx
            write_sidecar(conv8.ort_path, {
                **base, "required_operators_config": conv8.config_path.name, "target_platform": target_platform,
                "quantization": result.quant.to_dict(),
                "int8_ort_vs_int8_onnx": {"max_abs_diff": s.max_abs_diff, "top1_agreement": s.agreement}})
    return result


def export_onnx_verified(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int | Sequence[int],
    *,
    task: str | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    fallback: bool = True,
    simplify: bool | None = None,
    in_chans: int = 3,
    images: Batch | None = None,
    n_random: int = 4,
    atol: float | None = None,
    optimize: bool = True,
) -> tuple[OnnxExport, ParityReport]:
    """:func:`export.to_onnx` + :func:`export.check_parity`, falling back to the other exporter on *either* failure.

    An exporter can succeed and still write a wrong graph: the TorchScript tracer (legacy) silently drops in-place
    writes through views (e.g. ``out.view(...).add_(...)``), which EMOv2's window attention uses. So a parity
    failure, like an exception, triggers the other exporter (through :func:`export.onnx_export.try_exporters`, the
    one fallback policy, which logs a warning) when ``fallback`` is on; the result records why. Raises
    :class:`ExportError` with every report when no exporter gives a matching graph (the last file is then renamed
    ``*.parity_failed.onnx``).
    """
    failed_parity: list[ParityReport] = []

    def attempt(name: str) -> tuple[OnnxExport, ParityReport]:
        try:
            ex = to_onnx(model, path, input_size, task=task, dynamic_batch=dynamic_batch, opset=opset, exporter=name,
                         fallback=False, simplify=simplify, in_chans=in_chans, optimize=optimize)
        except ModelDoesNotRun:
            raise
        except ExportError as e:
            failed_parity.clear()
            raise ExporterFailed(str(e)) from e
        parity = check_parity(model, ex.path, ex.spec, images=images, n_random=n_random, atol=atol,
                              raise_on_fail=False)
        if not parity.passed:
            failed_parity[:] = [parity]
            raise ExporterFailed(f"the {name} exporter wrote a graph that does not match PyTorch (max abs diff "
                                 f"{parity.max_abs_diff:.2e}, top-1 agreement {100 * parity.agreement:.2f}%)")
        return ex, parity

    try:
        (ex, parity), reasons = try_exporters(exporter_order(exporter, fallback), attempt)
    except ExporterFailed as e:
        tried = " | ".join(getattr(e, "reasons", [str(e)]))
        if failed_parity:  # the last exporter wrote a file, and it is wrong
            raise _fail(Path(path), f"the exported model does not match PyTorch:\n{failed_parity[0].summary()}\n"
                                    f"tried: {tried}") from e
        raise ExportError("no exporter produced a graph: " + tried) from e
    ex.requested_exporter = exporter
    ex.fallback_reason = " | ".join(reasons) or None
    return ex, parity


def _output_shapes(model: nn.Module, spec: ExportSpec) -> dict[str, list[Any]]:
    """Output shapes at batch 1 (``"batch"`` for a dynamic batch axis), for the sidecar."""
    import numpy as np

    adapter = build_adapter(model, spec)
    outs = torch_outputs(adapter, tuple(t.numpy() for t in spec.example_inputs(1)))
    shapes: dict[str, list[Any]] = {}
    for n, o in zip(spec.output_names, outs):
        shape: list[Any] = list(np.shape(o))
        if spec.dynamic_batch and n not in spec.batchless_outputs:
            shape[0] = "batch"
        shapes[n] = shape
    return shapes


def _runtime_module(format: str):  # noqa: A002 - the CLI's word
    """zoo.export.executorch or zoo.export.tflite, after checking that its optional extra is installed."""
    if format == "pte":
        from . import executorch as module

        module.require_executorch()
    else:
        from . import tflite as module

        module.require_litert()
    return module


def _export_runtime(format: str, model: nn.Module, meta: dict[str, Any], name: str, task: str,  # noqa: A002
                    size: tuple[int, ...], pre: dict[str, Any], path: Path, images: Batch | None, n_random: int,
                    atol: float | None) -> ExportResult:
    """--format pte / tflite: torch.export-based writer, parity in that runtime, sidecar (no ONNX on the way)."""
    from .spec import build_spec

    module = _runtime_module(format)
    spec = build_spec(task, size, False, model)
    if format == "pte":
        written = module.to_pte(model, path, spec)
        check = module.check_parity_pte
        how = {"exporter": "torch.export -> executorch to_edge_transform_and_lower (XnnpackPartitioner)",
               "runtime": "ExecuTorch (XNNPACK delegate)"}
    else:
        written = module.to_tflite(model, path, spec)
        check = module.check_parity_tflite
        how = {"exporter": "litert_torch.convert (torch.export -> StableHLO -> LiteRT)",
               "runtime": "LiteRT interpreter (ai_edge_litert)"}
    try:
        parity = check(model, written, spec, images=images, n_random=n_random, atol=atol, raise_on_fail=False)
    except ExportError as e:  # written but cannot run in its runtime: not at the path an app loads either
        raise _fail(written, str(e)) from e
    if not parity.passed:
        raise _fail(written, f"the .{format} model does not match PyTorch:\n{parity.summary()}")
    result = ExportResult(name, task, None, parity=[parity], files=[written])
    base = _base_fields(model, meta, name, task, spec, pre, None, _output_shapes(model, spec))
    write_sidecar(written, {**base, **how, "runtime_versions": module.versions(), "parity": parity.to_dict()})
    return result


def _base_fields(model: nn.Module, meta: dict[str, Any], name: str, task: str, spec: ExportSpec,
                 pre: dict[str, Any], ex: OnnxExport | None, output_shapes: dict[str, list[Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": meta.get("model") or name, "task": task, "head": meta.get("head") or getattr(model, "head", None),
        "num_classes": _num_classes(model, meta), "class_names": _class_names(model, meta),
        "input_size": list(spec.input_size), "dynamic_batch": spec.dynamic_batch,
        "preprocessing": pre,
        **io_description(spec, output_shapes),
        "source_checkpoint_metrics": meta.get("metrics"),
        # what `zoo eval FILE` / `zoo benchmark` score the file on: the checkpoint's dataset and splits
        "training_config": meta.get("config"),
    }
    if ex is not None:
        fields.update({"opset": ex.opset, "exporter": ex.exporter, "exporter_requested": ex.requested_exporter,
                       "exporter_fallback_reason": ex.fallback_reason, "simplified": ex.simplified,
                       "external_data": ex.external_data})
    # what an app needs to turn the outputs into predictions (detection: decoding, thresholds, NMS)
    fields.update(task_class(model, task).export_metadata(model, spec.input_size))
    return fields
