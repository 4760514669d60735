"""What an exported graph looks like: input/output names and shapes, read from the task model.

The graph's interface is the task model's (:class:`zoo.heads.TaskModel`): its ``input_names``, its
``graph_output_names`` and its export adapter (what the graph computes). For LightZoo's tasks:

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
from types import MappingProxyType

import torch
from torch import nn

from zoo.errors import ExportError, InputShapeError
from zoo.heads import get_task, task_class, task_names

TASKS: tuple[str, ...] = task_names()

#: default parity tolerance (max abs diff) per task, from the task classes (``TaskModel.export_atol``)
DEFAULT_ATOL: Mapping[str, float] = MappingProxyType({t: get_task(t).export_atol for t in TASKS})


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
    #: True: inputs are normalised images; False: ``[0, 1]`` images the graph normalises itself (detection)
    normalized_inputs: bool = True

    def example_inputs(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Standard-normal inputs (the scale of normalised images), reproducible by ``seed``; graphs that take
        [0, 1] images (they normalise inside) get uniform [0, 1) inputs."""
        g = torch.Generator().manual_seed(seed)
        draw = torch.randn if self.normalized_inputs else torch.rand
        return tuple(draw(batch, *self.input_size, generator=g) for _ in self.input_names)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        names = self.input_names + [o for o in self.output_names if o not in self.batchless_outputs]
        return {n: {0: "batch"} for n in names}


def resolve_task(model: nn.Module, task: str | None = None) -> str:
    """The task of ``model``: its own for a task model, else its declared ``task``, else ``task``, else
    classification (see :func:`zoo.heads.task_class`)."""
    try:
        return task_class(model, task).task
    except Exception as e:  # noqa: BLE001 - ConfigError from the registry becomes an export error here
        raise ExportError(str(e)) from e


def build_spec(task: str | None, input_size: tuple[int, ...], dynamic_batch: bool = False,
               model: nn.Module | None = None) -> ExportSpec:
    """The graph interface of ``model`` (or of ``task`` when no model is given) at ``input_size``."""
    try:
        cls = task_class(model, task) if model is not None else get_task(task or TASKS[0])
    except Exception as e:  # noqa: BLE001
        raise ExportError(str(e)) from e
    outputs = cls.graph_output_names(model) if model is not None else cls.output_names
    if not outputs:
        raise ExportError(f"a {cls.task} export spec needs the model (its head decides the outputs)")
    spec = cls.input_spec_of(model, input_size, dynamic_batch) if model is not None else None
    normalized = spec.normalized if spec is not None else not cls.data_rules.get("normalize_in_model", False)
    return ExportSpec(cls.task, tuple(input_size), list(cls.input_names), list(outputs), dynamic_batch,
                      primary_output=cls.primary_output, class_axis=cls.class_axis,
                      batchless_outputs=list(cls.batchless_outputs), normalized_inputs=normalized)


def build_adapter(model: nn.Module, spec: ExportSpec) -> nn.Module:
    """Wrap ``model`` so its forward takes the spec's inputs and returns its outputs (the task model's adapter)."""
    if getattr(model, "is_export_adapter", False):
        return model
    return task_class(model, spec.task).adapter_for(model, spec.input_size)


def as_tuple(out: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


