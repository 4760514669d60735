"""The task-model contract every head builds on (torchvision's detectors and smp's ``SegmentationModel`` are the
model: a class that owns what its task means, so callers never compare task or head names).

A task model knows:

- ``task`` and ``head`` (``head_name`` is kept as an alias);
- its input: :meth:`TaskModel.input_spec` (channels, size, graph input names, dynamic axes);
- its data config (timm's keys ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``,
  plus ``color``, ``resize_in_model`` and ``normalize_in_model``), resolved once from the backbone's timm
  ``pretrained_cfg``, the task's rules and the checkpoint (:func:`zoo.data.transforms.resolve_data_config`);
- its export adapter (what the exported graph computes) and :meth:`TaskModel.postprocess` (graph outputs ->
  predictions, the same thing ``forward`` returns in ``eval()`` mode).

Bare modules (a timm classifier from ``zoo.create_model(name)``, or a complete network such as LightM-UNet that
declares ``task``) get the same services through the class methods, which take the module as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ExportError


@dataclass(frozen=True)
class InputSpec:
    """What a task model's exported graph takes: channels, spatial size, the names of its image inputs, and whether
    the inputs are normalised images or ``[0, 1]`` images the graph normalises itself."""

    channels: int
    size: tuple[int, ...]
    input_names: tuple[str, ...]
    normalized: bool = True
    dynamic_batch: bool = False
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, *spatial)``, without the batch."""
        return (self.channels, *self.size)


def primary_tensor(out: object) -> torch.Tensor:
    """The tensor an app should receive from a dense or classification forward (torchvision's ``{"out": ...}``
    dicts keep ``out``)."""
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
        "Wrap the model so that forward() returns the tensor an app should receive.")


class TensorAdapter(nn.Module):
    """Export adapter of the image-in, tensor-out tasks: ``input`` -> the model's primary tensor."""

    is_export_adapter = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (the graph input's name)
        return primary_tensor(self.model(input))


class PairTensorAdapter(TensorAdapter):
    """Export adapter of two-image tasks (change detection): ``input_a``, ``input_b`` -> the primary tensor."""

    def forward(self, input_a: torch.Tensor, input_b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return primary_tensor(self.model(input_a, input_b))


class TaskModel(nn.Module):
    """Base class of every task model (see the module docstring). Subclasses set the class attributes."""

    #: the task's name, as users type it
    task: ClassVar[str] = ""
    #: number of classes when the user gives none (ImageNet, COCO, ADE20K, change / no change)
    default_num_classes: ClassVar[int | None] = None
    #: names of the image arguments of ``forward`` and of the exported graph's inputs
    input_names: ClassVar[tuple[str, ...]] = ("input",)
    #: names of the exported graph's outputs
    output_names: ClassVar[tuple[str, ...]] = ("logits",)
    #: output whose arg-max is the prediction, and the axis of its classes (parity reports agreement on it)
    primary_output: ClassVar[str] = "logits"
    class_axis: ClassVar[int] = 1
    #: outputs without a batch axis (detection anchors)
    batchless_outputs: ClassVar[tuple[str, ...]] = ()
    #: export parity tolerance (max abs diff). Few, small classification logits hold 1e-4; dense outputs pass
    #: through decoders and upsampling and are compared at ~10^5 positions, so they get 1e-3.
    export_atol: ClassVar[float] = 1e-3
    #: whether the heads sit on a ``features_only`` backbone (classification uses the whole classifier)
    needs_features: ClassVar[bool] = True
    #: validation metric that selects the best checkpoint (higher is better)
    metric: ClassVar[str] = ""
    #: keys of the images in a collated batch dict (``zoo.data.collate``), in ``forward``'s order
    batch_keys: ClassVar[tuple[str, ...]] = ("images",)
    #: training augmentation may rotate by right angles and flip vertically (overhead imagery has no "up")
    augment_rotations: ClassVar[bool] = False
    #: data-config entries that hold for every model of the task (dense tasks never crop: masks must align)
    data_rules: ClassVar[Mapping[str, Any]] = {}
    #: how a list of dataset samples becomes the batch dict of ``batch_keys`` (:mod:`zoo.data.collate`)
    collate: ClassVar[Callable[[Sequence[dict[str, Any]]], dict[str, Any]] | None] = None
    #: the task's synthetic shapes data, in memory and on disk (:class:`zoo.data.synthetic.SyntheticFormat`)
    synthetic: ClassVar[Any] = None
    #: whether the whole model (post-processing included) exports as one graph (int8 QAT traces it whole)
    exports_one_graph: ClassVar[bool] = True
    #: whether the model's output is one logit vector per image, so a teacher's logits can be distilled into it
    distills_logits: ClassVar[bool] = False

    head: str = ""
    num_classes: int = 0

    @property
    def head_name(self) -> str:
        return self.head

    # ------------------------------------------------------------------------------------------ creation
    @classmethod
    def create(cls, name: str, *, pretrained: bool | str = False, head: str | None = None,
               num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
        """What ``zoo.create_model(name, task=cls.task, ...)`` builds: the head on a ``features_only`` backbone."""
        from .registry import get_head

        if num_classes is None:
            num_classes = cls.default_num_classes
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return get_head(cls.task, head).build(name, in_chans=3 if in_chans is None else in_chans,
                                              pretrained_backbone=pretrained, **kwargs)

    @classmethod
    def supports(cls, backbone_name: str) -> bool:
        """Whether this head class can be built on ``backbone_name`` beyond what its feature strides say (the
        registry's ``needs`` / ``min_levels`` judge those)."""
        return True

    @staticmethod
    def size_kwargs(img_size: int) -> dict[str, Any]:
        """Builder arguments that follow the training image size (detectors: their internal resize)."""
        return {}

    # ------------------------------------------------------------------------------------------ data config
    @property
    def data_config(self) -> dict[str, Any]:
        """The model's preprocessing (timm keys plus ``color``, ``resize_in_model``, ``normalize_in_model``)."""
        from ..data.transforms import resolve_data_config

        return resolve_data_config(self)

    # ------------------------------------------------------------------------------------------ input/export
    @classmethod
    def input_spec_of(cls, model: nn.Module, input_size: Sequence[int], dynamic_batch: bool = False) -> InputSpec:
        """The graph input of ``model`` at ``input_size`` ``(C, *spatial)``."""
        c, *spatial = (int(s) for s in input_size)
        axes = {n: {0: "batch"} for n in cls.input_names} if dynamic_batch else {}
        return InputSpec(c, tuple(spatial), cls.input_names, not cls.data_rules.get("normalize_in_model", False),
                         dynamic_batch, axes)

    def input_spec(self, input_size: Sequence[int] | None = None, dynamic_batch: bool = False) -> InputSpec:
        """The graph input at ``input_size`` (default: the data config's)."""
        return self.input_spec_of(self, input_size or self.data_config["input_size"], dynamic_batch)

    @classmethod
    def graph_output_names(cls, model: nn.Module) -> tuple[str, ...]:
        return cls.output_names

    @classmethod
    def adapter_for(cls, model: nn.Module, input_size: Sequence[int]) -> nn.Module:
        """The module whose forward is what the exported graph computes (inputs and outputs named by the spec)."""
        return (PairTensorAdapter if len(cls.input_names) == 2 else TensorAdapter)(model).eval()

    def export_adapter(self, input_size: Sequence[int] | None = None) -> nn.Module:
        return self.adapter_for(self, input_size or self.data_config["input_size"])

    @classmethod
    def export_metadata(cls, model: nn.Module, input_size: Sequence[int]) -> dict[str, Any]:
        """Task-specific sidecar fields an app needs to turn the graph's outputs into predictions."""
        return {}

    @classmethod
    def postprocess_outputs(cls, outputs: Sequence[Any], params: Mapping[str, Any] | None = None) -> Any:
        """Graph outputs (in ``output_names`` order) -> predictions; the default is the primary tensor."""
        return outputs[0]

    def postprocess(self, outputs: Sequence[Any], input_size: Sequence[int] | None = None) -> Any:
        """The outputs of :meth:`export_adapter` at ``input_size`` (default: the data config's) -> predictions."""
        size = input_size or self.data_config["input_size"]
        return self.postprocess_outputs(outputs, self.export_metadata(self, size))

    @classmethod
    def example_inputs(cls, spec: InputSpec, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Inputs at the scale the graph expects: standard normal for normalised images, uniform [0, 1) for
        graphs that normalise themselves."""
        draw = torch.randn if spec.normalized else torch.rand
        return tuple(draw(batch, *spec.shape, generator=generator) for _ in spec.input_names)

    @classmethod
    def run_exported(cls, run_one: Callable[[list[Any]], Sequence[Any]], inputs: Sequence[torch.Tensor],
                     sidecar: Mapping[str, Any]) -> Any:
        """What the PyTorch model returns in eval mode, computed by an exported file: ``run_one`` runs the file on
        one batch-1 list of numpy inputs and returns its outputs in the sidecar's order. Here: the primary output
        for each image of the batch, concatenated."""
        import numpy as np

        from ..errors import InputShapeError

        size = tuple(int(s) for s in sidecar["input_size"])
        names = [o["name"] for o in sidecar["outputs"]]
        primary = names.index(sidecar.get("primary_output") or names[0])
        arrays = [x.detach().float().cpu().numpy() for x in inputs]
        if tuple(arrays[0].shape[1:]) != size:
            raise InputShapeError(f"{sidecar.get('file', 'the exported file')} takes inputs of shape "
                                  f"(N, {', '.join(map(str, size))}); the data gives {tuple(arrays[0].shape)} "
                                  "(set data.img_size to match)")
        outs = [run_one([a[i:i + 1] for a in arrays])[primary] for i in range(arrays[0].shape[0])]
        return torch.from_numpy(np.concatenate(outs, 0))

    @classmethod
    def meter(cls, num_classes: int) -> Any:
        """A fresh ``zoo.metrics`` accumulator of the task's validation metrics (``update(outputs, targets)``)."""
        raise NotImplementedError(f"{cls.__name__} has no metric meter")

    def prediction_loss(self) -> Callable[..., dict[str, torch.Tensor]] | None:
        """The training loss as a function of the exported graph's outputs and the batch's targets, for training an
        exported inference graph (``train.qat``); ``None`` where the loss needs more than the outputs (detection's
        anchor matching inside the model)."""
        return None

    # ------------------------------------------------------------------------------------------ prediction
    @classmethod
    def predict_record(cls, model: nn.Module, images: Sequence[torch.Tensor], class_names: Sequence[str],
                       **options: Any) -> dict[str, Any]:
        """``zoo predict``'s JSON record for one input (``images``: one preprocessed ``(C, H, W)`` per input)."""
        raise NotImplementedError
