"""Image classification as a task model: the backbone's own timm classifier, plus the task-model contract.

``zoo.create_model(name)`` (task "classification") returns the plain timm model, as timm users expect; the
:class:`ClassificationModel` class methods describe such a bare classifier (data config, export adapter,
post-processing). The instance is what ``build_task_model("classification", ...)`` returns so that the task obeys
the same contract as the dense tasks: ``model(x)`` gives logits ``(N, num_classes)``; in ``train()`` mode
``model(x, targets)`` gives ``{"loss_cls": cross-entropy}``. ``targets`` may be class indices ``(N,)`` or soft
targets ``(N, num_classes)`` (mixup / cutmix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import synthetic as synthetic_data
from ..data.collate import collate_classification
from ..errors import DataError
from .base import TaskModel
from .registry import register_head, register_task


@register_task
class ClassificationModel(TaskModel):
    """A timm classifier (``self.model``) that returns a loss dict when trained with targets."""

    task = "classification"
    collate = staticmethod(collate_classification)
    synthetic = synthetic_data.CLASSIFICATION
    distills_logits = True
    export_atol = 1e-4
    metric = "top1"
    needs_features = False

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, head: str = "linear") -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.label_smoothing = label_smoothing
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.model(x)
        if self.training and targets is not None:
            if targets.ndim == 1 and targets.numel() and int(targets.max()) >= self.num_classes:
                raise DataError(f"class label {int(targets.max())} >= num_classes={self.num_classes}")
            return {"loss_cls": F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)}
        return logits

    @classmethod
    def create(cls, name: str, *, pretrained: bool | str = False, head: str | None = None,
               num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
        """The plain timm classifier, as ``timm.create_model`` gives it (timm's loader for every model; ours resolve
        their tags from ``weights_manifest.json``, checked on download)."""
        from ..registry import create_timm_model
        from ..weights import timm_pretrained_args
        from .registry import get_head

        get_head(cls.task, head)  # an unknown head is an error here too
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        return create_timm_model(name, **timm_pretrained_args(name, pretrained), **kwargs)

    @classmethod
    def postprocess_outputs(cls, outputs: Sequence[Any], params: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Logits -> class probabilities (softmax over the class axis)."""
        return torch.as_tensor(outputs[0]).float().softmax(-1)

    @classmethod
    def predict_record(cls, model: nn.Module, images: Sequence[torch.Tensor], class_names: Sequence[str],
                       topk: int = 5, **options: Any) -> dict[str, Any]:
        prob = cls.postprocess_outputs([model(images[0].unsqueeze(0))])[0]
        p, idx = prob.topk(min(topk, prob.numel()))
        return {"topk": [{"class": class_names[j] if j < len(class_names) else str(j), "index": int(j),
                          "prob": float(q)} for q, j in zip(p.tolist(), idx.tolist())]}


@register_head("classification", "linear")
def build_classification_model(backbone_name: str, head: str = "linear", num_classes: int | None = None,
                               in_chans: int = 3, pretrained_backbone: bool | str = False,
                               label_smoothing: float = 0.0, **kwargs: object) -> ClassificationModel:
    """The backbone's timm classifier (global pool + linear, or the family's own head) wrapped as a task model."""
    from ..registry import check_model_name, create_timm_model
    from ..weights import timm_pretrained_args

    check_model_name(backbone_name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = create_timm_model(backbone_name, **timm_pretrained_args(backbone_name, pretrained_backbone),
                              in_chans=in_chans, **kwargs)
    return ClassificationModel(model, label_smoothing, head)

