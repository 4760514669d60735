"""Image classification as a task model: the backbone's own timm classifier, plus the task-model contract.

``zoo.create_model(name)`` (task "classification") returns the plain timm model, as timm users expect. This
wrapper is what ``build_task_model("classification", ...)`` returns so that the classification task obeys the same
contract as the dense tasks: ``model(x)`` gives logits ``(N, num_classes)``; in ``train()`` mode
``model(x, targets)`` gives ``{"loss_cls": cross-entropy}``. ``targets`` may be class indices ``(N,)`` or soft
targets ``(N, num_classes)`` (mixup / cutmix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError

CLASSIFICATION_HEADS = ("linear",)


class ClassificationModel(nn.Module):
    """A timm classifier (``self.model``) that returns a loss dict when trained with targets."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.model(x)
        if self.training and targets is not None:
            if targets.ndim == 1 and targets.numel() and int(targets.max()) >= self.num_classes:
                raise DataError(f"class label {int(targets.max())} >= num_classes={self.num_classes}")
            return {"loss_cls": F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)}
        return logits


def build_classification_model(backbone_name: str, head: str = "linear", num_classes: int | None = None,
                               in_chans: int = 3, pretrained_backbone: bool | str = False,
                               label_smoothing: float = 0.0, **kwargs: object) -> ClassificationModel:
    """The backbone's timm classifier (global pool + linear, or the family's own head) wrapped as a task model."""
    if head not in CLASSIFICATION_HEADS:
        raise ConfigError(f"unknown classification head {head!r}; choose one of {', '.join(CLASSIFICATION_HEADS)}")
    from ..registry import _ZOO_MODELS, check_model_name, create_timm_model

    check_model_name(backbone_name)
    ours = backbone_name in _ZOO_MODELS
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = create_timm_model(backbone_name, pretrained=bool(pretrained_backbone) and not ours, in_chans=in_chans,
                              **kwargs)
    if pretrained_backbone and ours:
        from ..weights import load_pretrained

        load_pretrained(model, backbone_name, None if pretrained_backbone is True else str(pretrained_backbone))
    return ClassificationModel(model, label_smoothing)
