"""Object detection on any features_only backbone, composed from torchvision's detection framework.

backbone (timm ``features_only``) -> ``torchvision.ops.FeaturePyramidNetwork`` (+ P6/P7 or max-pool levels) ->
torchvision ``RetinaNet`` / ``FCOS`` / ``FasterRCNN``; ``SSDLite`` takes the stride-16/32 maps plus SSD's
extra down-sampling blocks instead of an FPN, as in the SSDLite recipe (MobileNetV2, arXiv 1801.04381).

Settings from the EMOv2 paper (arXiv 2412.06674; official mmdet configs zhangzjn/EMOv2 @582a96f,
``downstreams/det/configs/{retinanet,ssd}``):
- RetinaNet (``retinanet_emo2_*``: mmdet's ``retinanet_r50_fpn`` base, backbone ``out_indices=(1, 2, 3, 4)``, FPN
  ``start_level=1``): stages 2-4 (strides 8/16/32) into a 256-channel FPN, P6 and P7 made by extra stride-2 convs
  on the *input* C5 (``add_extra_convs='on_input'``), 9 anchors per location of base size 4 x stride.
- SSDLite (``ssdlite_emo2_*``: ``out_indices=(3, 4)``, SSDNeck with depthwise extra layers 512/256/256/128, BN
  eps 1e-3 momentum 0.03, ReLU6): strides 16 and 32 plus four extra blocks (1x1 conv, depthwise 3x3 stride 2,
  1x1 conv), 6 levels, default boxes with ratios {2, 3} and min sizes 48/100/150/202/253/304 px at 320 x 320.
  The official runs also freeze BN statistics (``norm_eval=True``); freeze them yourself when fine-tuning.

Contract: ``model(images, targets)`` in ``train()`` returns torchvision's loss dict; ``model(images)`` in
``eval()`` returns ``[{"boxes": (K, 4) xyxy in input pixels, "labels": (K,), "scores": (K,)}]``, best score first
(at most ``detections_per_img``, or ``box_detections_per_img`` for Faster R-CNN). ``images`` is a
list of ``(3, H, W)`` tensors in ``[0, 1]`` or one ``(N, 3, H, W)`` batch; normalisation with the backbone's
mean/std and resizing to ``min_size``/``max_size`` happen inside (torchvision's ``GeneralizedRCNNTransform``).
Labels are ``0 .. num_classes - 1`` for every head; Faster R-CNN's and SSD's background class 0 is hidden.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError, DataError, InputShapeError
from ._backbone import FeatureBackbone, create_backbone

DETECTION_HEADS = ("retinanet", "fcos", "ssdlite", "fasterrcnn")
# default-box sizes of the 6 SSDLite levels at 320 x 320 (EMOv2 ssdlite_emo2_*_coco.py: min_sizes + final max)
SSDLITE_BOX_SIZES = (48, 100, 150, 202, 253, 304, 320)


class FPNBackbone(nn.Module):
    """Feature extractor + FPN returning an ``OrderedDict`` of equal-width maps (torchvision's backbone contract)."""

    def __init__(self, body: FeatureBackbone, out_channels: int, extra_blocks: ExtraFPNBlock | None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _p6p7(in_channels: int, out_channels: int, on_input: bool) -> LastLevelP6P7:
    """RetinaNet's P6/P7; ``on_input`` makes P6 from C5 even when C5 happens to have the FPN width."""
    block = LastLevelP6P7(in_channels, out_channels)
    block.use_P5 = not on_input
    if on_input:
        return block
    if in_channels != out_channels:  # torchvision builds p6 for C5; rebuild it for P5 input
        block.p6 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        nn.init.kaiming_uniform_(block.p6.weight, a=1)
        nn.init.constant_(block.p6.bias, 0)
    return block


def _ssd_extra_block(cin: int, cout: int, norm_layer: Any) -> nn.Sequential:
    """SSDLite extra level: 1x1 reduce, depthwise 3x3 stride 2, 1x1 expand, each with BN + ReLU6."""
    mid = cout // 2
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), norm_layer(mid), nn.ReLU6(inplace=True),
        nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False), norm_layer(mid), nn.ReLU6(inplace=True),
        nn.Conv2d(mid, cout, 1, bias=False), norm_layer(cout), nn.ReLU6(inplace=True),
    )


class SSDLiteBackbone(nn.Module):
    """Stride-16 and stride-32 maps plus extra stride-2 blocks, returned as an ``OrderedDict``."""

    def __init__(self, body: FeatureBackbone, extra_channels: Sequence[int], norm_layer: Any) -> None:
        super().__init__()
        self.body = body
        chans = [body.channels[-1], *extra_channels]
        self.extra = nn.ModuleList(_ssd_extra_block(a, b, norm_layer) for a, b in zip(chans[:-1], chans[1:]))
        self.out_channels = [*body.channels, *extra_channels]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        y = feats[-1]
        for block in self.extra:
            y = block(y)
            feats.append(y)
        return OrderedDict((str(i), f) for i, f in enumerate(feats))


class DetectionModel(nn.Module):
    """A torchvision detector behind LightZoo's task contract (label offset, input and target checks)."""

    def __init__(self, detector: nn.Module, num_classes: int, head: str, label_offset: int, in_chans: int) -> None:
        super().__init__()
        self.detector = detector
        self.num_classes = num_classes
        self.head_name = head
        self.label_offset = label_offset  # 1 where torchvision reserves class 0 for background
        self.in_chans = in_chans

    @property
    def backbone(self) -> FeatureBackbone:
        """The timm feature extractor (e.g. to freeze it or give it its own learning rate)."""
        return self.detector.backbone.body

    def _images(self, images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise InputShapeError(f"detection takes a list of (C, H, W) images or an (N, C, H, W) batch, "
                                      f"got shape {tuple(images.shape)}")
            images = list(images)
        for im in images:
            if im.ndim != 3 or im.shape[0] != self.in_chans:
                raise InputShapeError(f"each image must be ({self.in_chans}, H, W), got {tuple(im.shape)}")
        return list(images)

    def _targets(self, targets: Sequence[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
        if len(targets) != n:
            raise InputShapeError(f"{n} images but {len(targets)} targets")
        out = []
        for i, t in enumerate(targets):
            boxes, labels = t["boxes"], t["labels"]
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(labels) != len(boxes):
                raise InputShapeError(f"target {i}: boxes must be (K, 4) xyxy with K labels, got boxes "
                                      f"{tuple(boxes.shape)} and {len(labels)} labels")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise DataError(f"target {i}: label {int(labels.max())} outside [0, {self.num_classes})")
            if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):
                raise DataError(f"target {i}: degenerate box (x2 <= x1 or y2 <= y1) in {boxes.tolist()}")
            out.append({**t, "boxes": boxes.float(), "labels": labels.long() + self.label_offset})
        return out

    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        imgs = self._images(images)
        if self.training:
            if targets is None:
                raise ValueError("a detection model in train() mode needs targets (list of dicts with 'boxes' and "
                                 "'labels'); call model.eval() for predictions")
            return self.detector(imgs, self._targets(targets, len(imgs)))
        dets = self.detector(imgs)
        if self.label_offset:
            dets = [{**d, "labels": d["labels"] - self.label_offset} for d in dets]
        return dets


def _retina_anchor_sizes(strides: Sequence[int], octave_base: float = 4.0) -> tuple[tuple[int, ...], ...]:
    """Three scales per octave, base size 4 x stride (RetinaNet paper, as torchvision and mmdet use)."""
    return tuple(tuple(int(octave_base * s * 2 ** (i / 3)) for i in range(3)) for s in strides)


def build_detection_model(
    backbone_name: str,
    head: str = "retinanet",
    num_classes: int = 80,
    in_chans: int = 3,
    pretrained_backbone: bool | str = False,
    min_size: int | None = None,
    max_size: int | None = None,
    fpn_channels: int = 256,
    out_indices: Sequence[int] | None = None,
    extra_channels: Sequence[int] = (512, 256, 256, 128),
    norm_eval: bool = False,
    **kwargs: Any,
) -> DetectionModel:
    """Detector on ``backbone_name``; remaining ``kwargs`` go to the torchvision model (``score_thresh``,
    ``nms_thresh``, ``detections_per_img``, ...). ``min_size``/``max_size`` default to torchvision's 800/1333
    (320 x 320 for SSDLite). ``fpn_channels`` is the FPN width (256 in the papers). ``norm_eval=True`` keeps the
    backbone's BatchNorm statistics frozen in training, as the official EMOv2 detection runs do."""
    if head not in DETECTION_HEADS:
        raise ConfigError(f"unknown detection head {head!r}; choose one of {', '.join(DETECTION_HEADS)}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    bkw: dict[str, Any] = dict(in_chans=in_chans, pretrained=pretrained_backbone, out_indices=out_indices)
    model = _build_detector(backbone_name, head, num_classes, in_chans, bkw, min_size, max_size, fpn_channels,
                            extra_channels, kwargs)
    model.backbone.norm_eval = norm_eval
    return model


def _build_detector(backbone_name: str, head: str, num_classes: int, in_chans: int, bkw: dict[str, Any],
                    min_size: int | None, max_size: int | None, fpn_channels: int, extra_channels: Sequence[int],
                    kwargs: dict[str, Any]) -> DetectionModel:
    min_size = min_size or (320 if head == "ssdlite" else 800)
    max_size = max_size or (min_size if head == "ssdlite" else 1333)

    if head == "ssdlite":
        body = create_backbone(backbone_name, (16, 32), **bkw)
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDLite BN settings
        backbone = SSDLiteBackbone(body, extra_channels, norm)
        n_levels = len(backbone.out_channels)
        ratios = [[2, 3] for _ in range(n_levels)]
        if n_levels == len(SSDLITE_BOX_SIZES) - 1:
            # EMOv2's SSDLite config: min sizes 48..304 px at 320 (max size = next level's min size, last 320)
            anchors = DefaultBoxGenerator(ratios, scales=[s / 320 for s in SSDLITE_BOX_SIZES])
        else:
            anchors = DefaultBoxGenerator(ratios, min_ratio=0.2, max_ratio=0.95)
        ssd_head = SSDLiteHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm)
        detector: nn.Module = SSD(backbone, anchors, (min_size, max_size), num_classes + 1,
                                  image_mean=list(body.mean), image_std=list(body.std), head=ssd_head, **kwargs)
        return DetectionModel(detector, num_classes, head, 1, in_chans)

    if head == "fasterrcnn":
        body = create_backbone(backbone_name, (4, 8, 16, 32), optional=(4,), **bkw)
        backbone = FPNBackbone(body, fpn_channels, LastLevelMaxPool())
        strides = [*body.reductions, body.reductions[-1] * 2]
        anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
        roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(body.reductions))], output_size=7, sampling_ratio=2)
        detector = FasterRCNN(backbone, num_classes + 1, min_size=min_size, max_size=max_size,
                              image_mean=list(body.mean), image_std=list(body.std), rpn_anchor_generator=anchors,
                              box_roi_pool=roi_pool, **kwargs)
        return DetectionModel(detector, num_classes, head, 1, in_chans)

    body = create_backbone(backbone_name, (8, 16, 32), **bkw)
    strides = [*body.reductions, body.reductions[-1] * 2, body.reductions[-1] * 4]
    if head == "retinanet":
        # EMOv2 / mmdet: extra convs on the input (C5); torchvision's own RetinaNet-v1 does the same
        backbone = FPNBackbone(body, fpn_channels, _p6p7(body.channels[-1], fpn_channels, on_input=True))
        anchors = AnchorGenerator(_retina_anchor_sizes(strides), ((0.5, 1.0, 2.0),) * len(strides))
        rhead = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
        detector = RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size,
                             image_mean=list(body.mean), image_std=list(body.std), anchor_generator=anchors,
                             head=rhead, **kwargs)
    else:
        # FCOS (arXiv 1904.01355): P6/P7 from P5, one "anchor" per location whose size is the level's stride
        backbone = FPNBackbone(body, fpn_channels, _p6p7(fpn_channels, fpn_channels, on_input=False))
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        fhead = FCOSHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
        detector = FCOS(backbone, num_classes, min_size=min_size, max_size=max_size, image_mean=list(body.mean),
                        image_std=list(body.std), anchor_generator=anchors, head=fhead, **kwargs)
    return DetectionModel(detector, num_classes, head, 0, in_chans)
