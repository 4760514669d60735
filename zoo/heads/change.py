"""Change detection: a siamese encoder with shared weights, multi-scale feature differences, a fusion decoder.

Design (a light FC-Siam-diff / FPN-style change detector, as in the LWGANet paper's change-detection setting):
1. one backbone (weights shared) encodes image A and image B; both go through it as one batch of 2N;
2. one shared FPN gives each a pyramid at strides 4-32 (4 only if the backbone has it);
3. per level, the absolute difference ``|P_A - P_B|``: symmetric in A and B, so swapping the dates cannot
   change the prediction of a binary change map;
4. top-down fusion from the deepest level: upsample, add the next finer difference, 3x3 conv + BN + ReLU;
5. a 1x1 classifier at the finest (1/4) level, bilinearly upsampled to the input size;
6. optional deep supervision: a classifier on every coarser fused level, its loss weighted by ``aux_weight``.

Input convention: **two tensors**, ``model(image_a, image_b)``, each ``(N, C, H, W)``, normalised like the
backbone's ImageNet input. A single 6-channel stack is rejected with an ``InputShapeError`` that says how to
split it, because silently treating it as a 6-channel image would build a different (non-siamese) model.

``model(a, b)`` returns logits ``(N, num_classes, H, W)`` (``num_classes=2``: no-change / change by default;
more classes for semantic change). In ``train()`` mode ``model(a, b, targets)`` with masks ``(N, H, W)``
returns ``{"loss_change": ...}`` plus ``{"loss_aux": ...}`` with deep supervision.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ..data import synthetic as synthetic_data
from ..data.collate import collate_change
from ..errors import ConfigError, InputShapeError
from ._backbone import FeatureBackbone, create_backbone
from .registry import register_head, register_task
from .segmentation import DenseTaskModel, _up, conv_bn_relu


@register_task
class ChangeModel(DenseTaskModel):
    """Siamese backbone + shared FPN + |difference| + top-down fusion + classifier (see module docstring)."""

    task = "change_detection"
    loss_name = "loss_change"
    collate = staticmethod(collate_change)
    synthetic = synthetic_data.CHANGE_DETECTION
    default_num_classes = 2
    input_names = ("input_a", "input_b")
    batch_keys = ("image_a", "image_b")
    augment_rotations = True
    metric = "f1"

    @classmethod
    def meter(cls, num_classes: int) -> Any:
        from ..metrics import ChangeMeter

        return ChangeMeter(num_classes)

    def __init__(self, backbone: FeatureBackbone, num_classes: int = 2, fpn_channels: int = 128,
                 deep_supervision: bool = False, aux_weight: float = 0.4, ignore_index: int = 255,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = "siamese_fpn"
        self.pretrained_cfg = backbone.pretrained_cfg
        self.ignore_index = ignore_index
        self.deep_supervision = deep_supervision
        self.aux_weight = aux_weight
        self.fpn = FeaturePyramidNetwork(backbone.channels, fpn_channels)
        n = len(backbone.channels)
        self.fuse = nn.ModuleList(conv_bn_relu(fpn_channels, fpn_channels) for _ in range(n - 1))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(fpn_channels, num_classes, 1)
        self.aux_classifiers = (nn.ModuleList(nn.Conv2d(fpn_channels, num_classes, 1) for _ in range(n - 1))
                                if deep_supervision else None)

    def _check(self, a: torch.Tensor, b: Any) -> None:
        c = self.backbone.in_chans
        if not isinstance(b, torch.Tensor):
            hint = (f" It looks like a {2 * c}-channel stack: call model(*torch.chunk(x, 2, dim=1))."
                    if isinstance(a, torch.Tensor) and a.ndim == 4 and a.shape[1] == 2 * c else "")
            raise InputShapeError(f"change detection takes two images, model(image_a, image_b), each (N, {c}, H, W)."
                                  + hint)
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != c:
            raise InputShapeError(f"image_a and image_b must both be (N, {c}, H, W) and equal in shape, got "
                                  f"{tuple(a.shape)} and {tuple(b.shape)}")

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        self._check(image_a, image_b)
        n = image_a.shape[0]
        feats = self.backbone(torch.cat([image_a, image_b], dim=0))  # one pass: shared weights, one BN batch
        pyr = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        diffs = [(p[:n] - p[n:]).abs() for p in pyr]
        x = diffs[-1]
        fused = []
        for d, fuse in zip(reversed(diffs[:-1]), reversed(self.fuse)):
            fused.append(x)
            x = fuse(_up(x, d.shape[-2:]) + d)
        logits = _up(self.classifier(self.dropout(x)), image_a.shape[-2:])
        if not (self.training and targets is not None):
            return logits
        losses = self.prediction_loss()(logits, targets)
        targets = targets.long()
        if self.aux_classifiers is not None:
            # fused[0] is the deepest level; classifiers are listed deepest first as well
            aux = [F.cross_entropy(_up(head(f), image_a.shape[-2:]), targets, ignore_index=self.ignore_index)
                   for f, head in zip(fused, self.aux_classifiers)]
            losses["loss_aux"] = self.aux_weight * torch.stack(aux).mean()
        return losses


@register_head("change_detection", "siamese_fpn", needs=(8, 16, 32))
def build_change_model(backbone_name: str, num_classes: int = 2, in_chans: int = 3,
                       pretrained_backbone: bool | str = False, out_indices: Sequence[int] | None = None,
                       backbone_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> ChangeModel:
    """Siamese change detector; kwargs: ``fpn_channels`` (128), ``deep_supervision``, ``aux_weight``,
    ``ignore_index``, ``dropout``. ``backbone_kwargs`` go to the timm encoder (a ViT's ``img_size``)."""
    if num_classes < 2:
        raise ConfigError("change detection needs num_classes >= 2 (2 = no-change / change)")
    backbone = create_backbone(backbone_name, (4, 8, 16, 32), optional=(4,), in_chans=in_chans,
                               pretrained=pretrained_backbone, out_indices=out_indices, **(backbone_kwargs or {}))
    return ChangeModel(backbone, num_classes=num_classes, **kwargs)
