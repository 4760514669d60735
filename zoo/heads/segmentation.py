"""Semantic segmentation decoders on any features_only backbone.

- ``fpn``: Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", arXiv 1901.02446): an FPN on
  strides 4-32, each level brought to 1/4 by (3x3 conv, BN, ReLU, 2x upsample) stages, summed, classified.
  This is the "Semantic FPN" head the EMOv2 paper (arXiv 2412.06674) reports on ADE20K.
- ``deeplabv3``: ASPP on the last stage (Chen et al., arXiv 1706.05587), torchvision's ``DeepLabHead``, plus the
  auxiliary FCN head on the previous stage (loss weight 0.4) that EMOv2's ``deeplabv3_emo2_*`` configs train with.
- ``lraspp``: Lite R-ASPP (Howard et al., MobileNetV3, arXiv 1905.02244), torchvision's ``LRASPPHead`` on the
  stride-8 and last levels.
- ``unet``: a U-Net decoder (Ronneberger et al., arXiv 1505.04597): upsample, concatenate the skip, two
  (3x3 conv, BN, ReLU), from the deepest level to the finest.

Contract: ``model(x)`` returns logits ``(N, num_classes, H, W)`` at the input resolution; in ``train()`` mode
``model(x, targets)`` with class-index masks ``(N, H, W)`` returns ``{"loss_seg": cross-entropy}`` (pixels equal
to ``ignore_index`` do not count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.lraspp import LRASPPHead
from torchvision.ops import FeaturePyramidNetwork

from ..data import synthetic as synthetic_data
from ..data.collate import collate_segmentation
from ..errors import ConfigError, DataError, InputShapeError
from ._backbone import FeatureBackbone, create_backbone
from .base import TaskModel, primary_tensor
from .registry import get_head, register_head, register_task


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """Conv (no bias: BN follows) + BN + ReLU, the unit every light decoder here is made of."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # interpolate to an explicit size (not scale_factor=2) so inputs that are not multiples of 32 still align
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SemanticFPNDecoder(nn.Module):
    """FPN + per-level upsampling branches summed at the finest level (Panoptic FPN's semantic branch)."""

    def __init__(self, in_channels: Sequence[int], reductions: Sequence[int], num_classes: int,
                 fpn_channels: int = 256, channels: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), fpn_channels)
        finest = reductions[0]
        self.branches = nn.ModuleList()
        for r in reductions:
            n_up = max(int(round(torch.log2(torch.tensor(r / finest)).item())), 0)
            layers = [conv_bn_relu(fpn_channels if i == 0 else channels, channels) for i in range(max(n_up, 1))]
            self.branches.append(nn.ModuleList(layers))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        pyramid = list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())
        size = pyramid[0].shape[-2:]
        out = None
        for p, branch in zip(pyramid, self.branches):
            for layer in branch:
                p = layer(p)
                if p.shape[-2] < size[0]:  # one 2x step per conv, as in Panoptic FPN
                    p = _up(p, [min(2 * p.shape[-2], size[0]), min(2 * p.shape[-1], size[1])])
            if p.shape[-2:] != size:
                p = _up(p, size)
            out = p if out is None else out + p
        return self.classifier(self.dropout(out))


class DeepLabV3Decoder(nn.Module):
    """torchvision's ``DeepLabHead`` (ASPP + 3x3 conv + classifier) on the last level (EMOv2: stride 32, no
    dilated backbone, rates 12/24/36).

    Its image-pooling branch has a BatchNorm on a 1x1 map, so training needs a batch of at least 2.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int,
                 atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__()
        self.head = DeepLabHead(in_channels[-1], num_classes, atrous_rates=tuple(atrous_rates))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.head(feats[-1])


class FCNAuxHead(nn.Module):
    """Auxiliary head for training only: 3x3 conv + BN + ReLU, dropout, 1x1 classifier (mmseg's FCNHead, 1 conv)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.block = nn.Sequential(conv_bn_relu(in_channels, channels), nn.Dropout2d(dropout),
                                   nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class LRASPPDecoder(nn.Module):
    """torchvision's ``LRASPPHead`` on the stride-8 ("low") and last ("high") levels."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, inter_channels: int = 128) -> None:
        super().__init__()
        self.head = LRASPPHead(in_channels[0], in_channels[-1], num_classes, inter_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.head({"low": feats[0], "high": feats[-1]})


class UNetDecoder(nn.Module):
    """U-Net decoder over every level: deepest first, each step upsample + concat skip + 2x conv-BN-ReLU."""

    def __init__(self, in_channels: Sequence[int], num_classes: int,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32)) -> None:
        super().__init__()
        n_steps = len(in_channels) - 1
        chans = list(decoder_channels)[:n_steps]
        chans += [chans[-1] if chans else 32] * (n_steps - len(chans))
        self.blocks = nn.ModuleList()
        cur = in_channels[-1]
        for skip_ch, out_ch in zip(reversed(list(in_channels[:-1])), chans):
            self.blocks.append(nn.Sequential(conv_bn_relu(cur + skip_ch, out_ch), conv_bn_relu(out_ch, out_ch)))
            cur = out_ch
        self.classifier = nn.Conv2d(cur, num_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for skip, block in zip(reversed(feats[:-1]), self.blocks):
            x = block(torch.cat([_up(x, skip.shape[-2:]), skip], dim=1))
        return self.classifier(x)


def check_mask_targets(targets: torch.Tensor, size: Sequence[int], num_classes: int, ignore_index: int) -> None:
    """Shape and label range of class-index masks; a bad label is a data bug, reported as such."""
    if targets.ndim != 3 or tuple(targets.shape[-2:]) != tuple(size):
        raise InputShapeError(f"targets must be class-index masks (N, {size[0]}, {size[1]}) matching the input, "
                              f"got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point:
        raise InputShapeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    valid = targets[targets != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= num_classes):
        raise DataError(f"mask label {int(valid.max() if valid.max() >= num_classes else valid.min())} outside "
                        f"[0, {num_classes}) (ignore_index={ignore_index})")


class DenseTaskModel(TaskModel):
    """Shared by segmentation and change detection: per-pixel logits at the input resolution."""

    data_rules = {"crop_pct": 1.0, "crop_mode": "squash"}  # resize straight to the input size: masks must align
    metric = "miou"

    @classmethod
    def meter(cls, num_classes: int) -> Any:
        from ..metrics import ConfusionMeter

        return ConfusionMeter(num_classes)

    #: the key of the main loss in the training loss dict
    loss_name: ClassVar[str] = "loss_seg"

    def prediction_loss(self) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
        """The main per-pixel cross-entropy from the logits alone (logits at the input resolution, so the mask
        check against their size is the check against the input's). ``forward`` uses it in training too; the
        auxiliary losses read features that an exported inference graph does not return, so fine-tuning a graph
        (``train.qat``) trains without them."""
        num_classes, ignore_index, name = self.num_classes, self.ignore_index, self.loss_name

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
            check_mask_targets(targets, logits.shape[-2:], num_classes, ignore_index)
            return {name: F.cross_entropy(logits, targets.long(), ignore_index=ignore_index)}

        return loss

    @classmethod
    def postprocess_outputs(cls, outputs: Sequence[Any], params: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Logits ``(N, C, H, W)`` -> class map ``(N, H, W)``."""
        return torch.as_tensor(outputs[0]).argmax(1)

    @classmethod
    def predict_record(cls, model: nn.Module, images: Sequence[torch.Tensor], class_names: Sequence[str],
                       **options: Any) -> dict[str, Any]:
        import numpy as np

        logits = primary_tensor(model(*(im.unsqueeze(0) for im in images)))
        mask = cls.postprocess_outputs([logits])[0].cpu().numpy().astype(np.uint8)
        counts = np.bincount(mask.ravel(), minlength=len(class_names) or 1)
        return {"class_pixels": {class_names[c] if c < len(class_names) else str(c): int(n)
                                 for c, n in enumerate(counts) if n}, "mask_array": mask}


@register_task
class SegmentationModel(DenseTaskModel):
    """Backbone + decoder; logits at input resolution, or a loss dict in train mode with targets."""

    task = "segmentation"
    collate = staticmethod(collate_segmentation)
    synthetic = synthetic_data.SEGMENTATION
    default_num_classes = 150

    def __init__(self, backbone: FeatureBackbone, decoder: nn.Module, num_classes: int, head: str,
                 ignore_index: int = 255, aux_head: nn.Module | None = None, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.aux_head = aux_head  # reads the second-to-last level; used in training only
        self.aux_weight = aux_weight
        self.num_classes = num_classes
        self.head = head
        self.ignore_index = ignore_index
        self.pretrained_cfg = backbone.pretrained_cfg

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        feats = self.backbone(x)
        logits = _up(self.decoder(feats), x.shape[-2:])
        if not (self.training and targets is not None):
            return logits
        losses = self.prediction_loss()(logits, targets)
        targets = targets.long()
        if self.aux_head is not None:
            aux = _up(self.aux_head(feats[-2]), x.shape[-2:])
            losses["loss_aux"] = self.aux_weight * F.cross_entropy(aux, targets, ignore_index=self.ignore_index)
        return losses


def _segmentation(backbone_name: str, head: str, levels: tuple[int, ...] | None,
                  make_decoder: Callable[..., nn.Module], num_classes: int = 150, in_chans: int = 3,
                  pretrained_backbone: bool | str = False, ignore_index: int = 255,
                  out_indices: Sequence[int] | None = None, aux: bool = False, aux_weight: float = 0.4,
                  **head_kw: Any) -> SegmentationModel:
    if num_classes < 2:
        raise ConfigError("segmentation needs num_classes >= 2 (use 2 for foreground/background)")
    backbone = make_dense_backbone(backbone_name, levels, in_chans, pretrained_backbone, out_indices)
    decoder = make_decoder(backbone.channels, backbone.reductions, num_classes, **head_kw)
    aux_head = FCNAuxHead(backbone.channels[-2], num_classes) if aux else None
    return SegmentationModel(backbone, decoder, num_classes, head, ignore_index, aux_head, float(aux_weight))


@register_head("segmentation", "fpn", needs=(8, 16, 32))
def build_semantic_fpn(backbone_name: str, **kwargs: Any) -> SegmentationModel:
    """Semantic FPN on strides 4-32; head kwargs ``fpn_channels``, ``channels``, ``dropout``."""
    return _segmentation(backbone_name, "fpn", (4, 8, 16, 32), SemanticFPNDecoder, **kwargs)


@register_head("segmentation", "deeplabv3")
def build_deeplabv3(backbone_name: str, aux: bool = True, **kwargs: Any) -> SegmentationModel:
    """ASPP on the last level plus (``aux=True``) the auxiliary FCN head; ``atrous_rates``, ``aux_weight``."""
    return _segmentation(backbone_name, "deeplabv3", None,
                         lambda chans, reds, n, **kw: DeepLabV3Decoder(chans, n, **kw), aux=aux, **kwargs)


@register_head("segmentation", "lraspp", needs=(8,))
def build_lraspp(backbone_name: str, **kwargs: Any) -> SegmentationModel:
    """Lite R-ASPP on the stride-8 and last levels; ``inter_channels``."""
    return _segmentation(backbone_name, "lraspp", (8, 32),
                         lambda chans, reds, n, **kw: LRASPPDecoder(chans, n, **kw), **kwargs)


@register_head("segmentation", "unet", min_levels=2)
def build_unet(backbone_name: str, **kwargs: Any) -> SegmentationModel:
    """U-Net decoder over every level; ``decoder_channels``."""
    return _segmentation(backbone_name, "unet", None, lambda chans, reds, n, **kw: UNetDecoder(chans, n, **kw),
                         **kwargs)


@register_head("segmentation", "native")
class NativeSegmentationModel(SegmentationModel):
    """A complete segmentation network trained and exported as its authors built it: no backbone split and no
    decoder of ours. Only networks whose class declares ``task = "segmentation"`` qualify (LightM-UNet-2D, whose
    own decoder and head are the paper's); for a backbone, pick a decoder head (fpn, unet, ...)."""

    def __init__(self, net: nn.Module, num_classes: int, ignore_index: int = 255) -> None:
        TaskModel.__init__(self)
        self.net = net
        self.num_classes = num_classes
        self.head = "native"
        self.ignore_index = ignore_index
        self.aux_head = None
        self.pretrained_cfg = dict(getattr(net, "pretrained_cfg", None) or {})
        exporter = getattr(net, "preferred_onnx_exporter", None)
        if exporter is not None:
            self.preferred_onnx_exporter = exporter

    @staticmethod
    def is_complete_network(model: nn.Module) -> bool:
        return getattr(type(model), "task", None) == SegmentationModel.task and not isinstance(model, TaskModel)

    @classmethod
    def supports(cls, backbone_name: str) -> bool:
        """Whether ``backbone_name`` is a complete segmentation network (built on the meta device: no memory)."""
        from ..registry import create_timm_model

        try:
            with torch.device("meta"):
                return cls.is_complete_network(create_timm_model(backbone_name))
        except Exception:  # noqa: BLE001 - a model that cannot even be built is not a candidate
            return False

    @classmethod
    def build(cls, backbone_name: str, num_classes: int = 2, in_chans: int = 3,
              pretrained_backbone: bool | str = False, ignore_index: int = 255, **net_kwargs: Any
              ) -> NativeSegmentationModel:
        from ..registry import create_timm_model

        if num_classes < 2:
            raise ConfigError("segmentation needs num_classes >= 2 (use 2 for foreground/background)")
        net = create_timm_model(backbone_name, pretrained=bool(pretrained_backbone), num_classes=num_classes,
                                in_chans=in_chans, **net_kwargs)
        if not cls.is_complete_network(net):
            others = ", ".join(h for h in _heads() if h != "native")
            raise ConfigError(f"head 'native' trains a complete segmentation network (e.g. lightm_unet_2d); "
                              f"{backbone_name} is not one: choose a decoder head ({others})")
        return cls(net, num_classes, ignore_index)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self.net(x)
        if not (self.training and targets is not None):
            return logits
        return self.prediction_loss()(logits, targets)


def _heads() -> tuple[str, ...]:
    from .registry import head_names

    return head_names("segmentation")


def build_segmentation_model(backbone_name: str, head: str = "fpn", num_classes: int = 150, in_chans: int = 3,
                             pretrained_backbone: bool | str = False, **kwargs: Any) -> SegmentationModel:
    """Semantic segmentation model; head kwargs: ``fpn_channels``/``channels`` (fpn), ``atrous_rates``,
    ``aux`` (default True), ``aux_weight`` (deeplabv3), ``inter_channels`` (lraspp), ``decoder_channels`` (unet)."""
    return get_head("segmentation", head).build(backbone_name, num_classes=num_classes, in_chans=in_chans,
                                                pretrained_backbone=pretrained_backbone, **kwargs)


def make_dense_backbone(name: str, reductions: tuple[int, ...] | None, in_chans: int, pretrained: bool | str,
                        out_indices: Sequence[int] | None = None) -> FeatureBackbone:
    """Backbone for a dense head; a stride-4 level is optional (some families start at stride 8)."""
    return create_backbone(name, reductions, min_levels=2 if reductions is None else 1, optional=(4,),
                           in_chans=in_chans, pretrained=pretrained, out_indices=out_indices)
