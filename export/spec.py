"""What an exported graph looks like for each task: input/output names, shapes, and the adapter that produces them.

Every task model is wrapped in a small adapter before export so that the ONNX graph has the same, documented
interface whatever the model returns in PyTorch (a tensor, a dict such as torchvision's ``{"out": ...}``, ...):

=================  ==============================  ===================================================
task               inputs (float32, normalised)    outputs
=================  ==============================  ===================================================
classification     ``input`` (N, C, H, W)          ``logits`` (N, num_classes)
segmentation       ``input`` (N, C, H, W)          ``logits`` (N, num_classes, H, W)
change_detection   ``input_a``, ``input_b``        ``logits`` (N, num_classes, H, W)
detection          ``images`` (N, 3, H, W) [0, 1]  ``cls_logits`` (N, A, C), ``bbox_regression`` (N, A, 4),
                                                   [``bbox_ctrness`` (N, A, 1), FCOS], ``anchors`` (A, 4)
=================  ==============================  ===================================================

``N`` is 1 unless the export asked for a dynamic batch. Detection exports the network up to the head's raw
outputs; decoding and NMS are :func:`export.detection_postprocess` (see :mod:`export.detection`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import ExportError, InputShapeError

TASKS = ("classification", "segmentation", "change_detection", "detection")

#: default parity tolerance (max abs diff) per task. Classification logits are few and small, so 1e-4 holds with
#: margin for float32 re-association in onnxruntime's fused kernels. Dense outputs are produced through a decoder,
#: upsampling and many more accumulation steps over larger values, and are compared at every pixel / anchor: the
#: worst of ~10^5 values drifts further than the worst of 10, so they get 1e-3.
DEFAULT_ATOL = {"classification": 1e-4, "segmentation": 1e-3, "change_detection": 1e-3, "detection": 1e-3}


def normalize_input_size(input_size: int | Sequence[int], in_chans: int = 3) -> tuple[int, ...]:
    """``224`` -> ``(in_chans, 224, 224)``; ``(H, W)`` -> ``(in_chans, H, W)``; ``(C, H, W)`` stays; volumes
    (3D models such as ``lightm_unet_3d``) are given in full as ``(C, D, H, W)``."""
    if isinstance(input_size, int):
        size: tuple[int, ...] = (in_chans, input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)
        if len(size) == 2:
            size = (in_chans, *size)
    if len(size) not in (3, 4) or min(size) < 1:
        raise InputShapeError(f"input size must be H, (H, W), (C, H, W) or (C, D, H, W) with positive values; "
                              f"got {input_size!r}")
    return size


@dataclass
class ExportSpec:
    """The interface of one exported graph; written into the metadata sidecar so an app knows what to feed."""

    task: str
    input_size: tuple[int, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool = False
    #: output whose arg-max is the prediction (parity reports agreement on it) and the axis holding classes
    primary_output: str = "logits"
    class_axis: int = 1
    #: outputs that carry no batch dimension (detection anchors)
    batchless_outputs: list[str] = field(default_factory=list)

    def example_inputs(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Standard-normal inputs (the scale of normalised images), reproducible by ``seed``; detection graphs take
        [0, 1] images (they normalise inside), so they get uniform [0, 1) inputs."""
        g = torch.Generator().manual_seed(seed)
        if self.task == "detection":
            return tuple(torch.rand(batch, *self.input_size, generator=g) for _ in self.input_names)
        return tuple(torch.randn(batch, *self.input_size, generator=g) for _ in self.input_names)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        names = self.input_names + [o for o in self.output_names if o not in self.batchless_outputs]
        return {n: {0: "batch"} for n in names}


class ClassificationAdapter(nn.Module):
    """``input`` -> ``logits``; accepts models returning a tensor or a one-entry dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (the graph input's name)
        return _primary_tensor(self.model(input))


class DenseAdapter(ClassificationAdapter):
    """Segmentation: ``input`` -> per-pixel ``logits``; torchvision-style ``{"out": ..., "aux": ...}`` keeps ``out``."""


class ChangeAdapter(nn.Module):
    """Change detection: two co-registered images (``input_a`` before, ``input_b`` after) -> ``logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_a: torch.Tensor, input_b: torch.Tensor) -> torch.Tensor:
        return _primary_tensor(self.model(input_a, input_b))


def _primary_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "out" in out:
            return out["out"]
        if len(out) == 1:
            return next(iter(out.values()))
    if isinstance(out, (list, tuple)) and len(out) == 1 and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ExportError(
        f"the model returns {type(out).__name__} in eval mode; export needs a tensor (or a dict with 'out'). "
        "Wrap the model so that forward() returns the tensor an app should receive."
    )


def guess_task(model: nn.Module) -> str:
    """The task of a model built by ``zoo.create_model`` (its ``task`` attribute), else classification."""
    task = getattr(model, "task", None)
    return task if task in TASKS else "classification"


@torch.no_grad()
def infer_task(model: nn.Module, input_size: tuple[int, ...], task: str | None) -> str:
    """``task`` when given; else a model whose plain output is a map (rank > 2, e.g. LightM-UNet, which is a
    complete segmentation network registered as a backbone) is segmentation, anything else classification."""
    if task is not None:
        return task
    guess = guess_task(model)
    if guess != "classification":
        return guess
    try:
        out = model.eval()(torch.zeros(1, *input_size))
    except Exception:  # noqa: BLE001 - to_onnx reports a model that cannot run with a clear error
        return guess
    out = _primary_tensor(out) if not isinstance(out, torch.Tensor) else out
    return "segmentation" if out.ndim > 2 else guess


def build_spec(task: str, input_size: tuple[int, ...], dynamic_batch: bool = False,
               model: nn.Module | None = None) -> ExportSpec:
    """The graph interface for ``task`` (see the module docstring)."""
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "classification":
        return ExportSpec(task, input_size, ["input"], ["logits"], dynamic_batch)
    if task == "segmentation":
        return ExportSpec(task, input_size, ["input"], ["logits"], dynamic_batch)
    if task == "change_detection":
        return ExportSpec(task, input_size, ["input_a", "input_b"], ["logits"], dynamic_batch)
    if model is None:
        raise ExportError("a detection export spec needs the model (its head decides the outputs)")
    from .detection import output_names

    # agreement is counted per anchor on the arg-max class of the raw logits
    return ExportSpec(task, input_size, ["images"], output_names(model), dynamic_batch, primary_output="cls_logits",
                      class_axis=2, batchless_outputs=["anchors"])


def build_adapter(model: nn.Module, spec: ExportSpec) -> nn.Module:
    """Wrap ``model`` so its forward takes the spec's inputs and returns its outputs as a tuple or tensor."""
    if isinstance(model, (ClassificationAdapter, ChangeAdapter)) or getattr(model, "is_export_adapter", False):
        return model
    if spec.task == "classification":
        return ClassificationAdapter(model).eval()
    if spec.task == "segmentation":
        return DenseAdapter(model).eval()
    if spec.task == "change_detection":
        return ChangeAdapter(model).eval()
    if spec.task == "detection":
        from .detection import DetectionAdapter

        return DetectionAdapter(model, spec.input_size).eval()
    raise ExportError(f"no export adapter for task {spec.task!r}")


def as_tuple(out: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)
