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

Each head is a class (``RetinaNetModel``, ``FCOSModel``, ``SSDLiteModel``, ``FasterRCNNModel``) that owns what
differs between heads: how it is built, its background slot, the raw outputs its exported graph has, how scores
are made from them and how candidates are selected (the same steps as torchvision's ``postprocess_detections``).

Export (:meth:`DetectionModel.adapter_for`): backbone + neck + head as one graph with raw outputs plus constant
anchors; decoding and NMS are :meth:`DetectionModel.postprocess_outputs`, driven by the sidecar's parameters.
The graph does not resize: the app resizes its image to the export size and scales boxes back. PyTorch and the
graph + post-processing agree exactly when the detector's internal resize is the identity at that size, which
building the model with ``min_size = max_size = data.img_size`` (what training does) gives for square inputs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

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

from ..data import synthetic as synthetic_data
from ..data.collate import collate_detection
from ..errors import ConfigError, DataError, ExportError, InputShapeError
from ._backbone import FeatureBackbone, create_backbone
from .base import TaskModel
from .registry import get_head, register_head, register_task

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


@register_task
class DetectionModel(TaskModel):
    """A torchvision detector behind LightZoo's task contract (label offset, input and target checks).

    Subclasses (one per head) set ``label_offset``, the graph's extra outputs and the post-processing steps.
    """

    task = "detection"
    exports_one_graph = False  # torchvision's post-processing is data-dependent
    collate = staticmethod(collate_detection)
    synthetic = synthetic_data.DETECTION
    default_num_classes = 80
    input_names = ("images",)
    output_names = ()  # the head decides: see graph_output_names
    primary_output = "cls_logits"  # agreement is counted per anchor on the arg-max class of the raw logits
    class_axis = 2
    batchless_outputs = ("anchors",)
    metric = "map"
    data_rules = {"crop_pct": 1.0, "crop_mode": "squash", "resize_in_model": True, "normalize_in_model": True}
    #: 1 where torchvision reserves class 0 for background
    label_offset: ClassVar[int] = 0
    #: raw outputs of the exported graph before ``anchors``
    raw_outputs: ClassVar[tuple[str, ...]] = ("cls_logits", "bbox_regression")
    #: how scores are made from the raw outputs (for the sidecar)
    score_formula: ClassVar[str] = ""
    topk_scope: ClassVar[str] = "per pyramid level"

    def __init__(self, detector: nn.Module, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.detector = detector
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.pretrained_cfg = self.backbone.pretrained_cfg

    @property
    def backbone(self) -> FeatureBackbone:
        """The timm feature extractor (e.g. to freeze it or give it its own learning rate)."""
        return self.detector.backbone.body

    @property
    def data_config(self) -> dict[str, Any]:
        """As every task model's, with the mean/std the detector normalises with and its internal size."""
        cfg = super().data_config
        t = self.detector.transform
        cfg["mean"], cfg["std"] = tuple(t.image_mean), tuple(t.image_std)
        return cfg

    @classmethod
    def meter(cls, num_classes: int) -> Any:
        from ..metrics import CocoEvaluator

        return CocoEvaluator(num_classes)

    @staticmethod
    def size_kwargs(img_size: int) -> dict[str, Any]:
        """Builder arguments that make the internal resize keep ``img_size`` images as they are."""
        return {"min_size": int(img_size), "max_size": int(img_size)}

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

    # ------------------------------------------------------------------------------------------------ export
    @classmethod
    def _exportable(cls, model: nn.Module) -> DetectionModel:
        if not isinstance(model, DetectionModel):
            raise ExportError(f"cannot export detection model {type(model).__name__}: expected a detector built by "
                              "zoo.create_model(..., task='detection')")
        return model

    @classmethod
    def graph_output_names(cls, model: nn.Module) -> tuple[str, ...]:
        return (*type(cls._exportable(model)).raw_outputs, "anchors")

    @classmethod
    def adapter_for(cls, model: nn.Module, input_size: Sequence[int]) -> nn.Module:
        return DetectionAdapter(cls._exportable(model), input_size).eval()

    @classmethod
    def export_metadata(cls, model: nn.Module, input_size: Sequence[int]) -> dict[str, Any]:
        det = cls._exportable(model)
        meaning = {
            "cls_logits": "raw class logits per anchor (N, A, C); scores per postprocess.score",
            "bbox_regression": "box deltas per anchor (N, A, 4), decoded against anchors by postprocess.box_coder",
            "bbox_ctrness": "FCOS centerness logits per anchor (N, A, 1)",
            "anchors": "anchor boxes (A, 4), xyxy in input pixels, no batch axis; levels in "
                       "postprocess.num_anchors_per_level",
        }
        return {"postprocess": {**DetectionAdapter(det, input_size).params,
                                "function": "zoo.export.detection_postprocess(outputs, sidecar['postprocess'])"},
                "output_meaning": {n: meaning[n] for n in cls.graph_output_names(det)}}

    def postprocess(self, outputs: Sequence[Any], input_size: Sequence[int] | None = None) -> Any:
        size = input_size or self.data_config["input_size"]
        return self.postprocess_outputs(outputs, DetectionAdapter(self, size).params)

    @classmethod
    def run_exported(cls, run_one: Any, inputs: Sequence[Any], sidecar: Mapping[str, Any]
                     ) -> list[dict[str, torch.Tensor]]:
        """Detections from an exported detector, as the PyTorch model gives them in eval mode: each image (a list
        of ``(3, H, W)`` in [0, 1], any size) resized to the graph's input, run, post-processed with the sidecar's
        parameters and its boxes scaled back to the image's pixels."""
        h_in, w_in = (int(s) for s in sidecar["input_size"][-2:])
        names = [o["name"] for o in sidecar["outputs"]]
        results = []
        for im in inputs[0]:
            h, w = im.shape[-2:]
            x = nn.functional.interpolate(im[None].float().cpu(), size=(h_in, w_in), mode="bilinear",
                                          align_corners=False)
            det = cls.postprocess_outputs(dict(zip(names, run_one([x.numpy()]))), sidecar["postprocess"])[0]
            det["boxes"] = det["boxes"] * torch.tensor([w / w_in, h / h_in, w / w_in, h / h_in])
            results.append(det)
        return results

    @classmethod
    def postprocess_outputs(cls, outputs: Sequence[Any] | Mapping[str, Any], params: Mapping[str, Any] | None = None
                            ) -> list[dict[str, torch.Tensor]]:
        """Raw outputs of an exported detector -> ``[{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}]``.

        ``outputs``: a dict by output name, or the list ``session.run(None, ...)`` returns (graph order).
        ``params``: the sidecar's ``postprocess`` block; its ``head`` picks the head class, whose steps are
        torchvision's eval path for that head, in the same order:

        1. scores from the raw outputs (the head's ``score_formula``);
        2. keep scores ``> score_thresh``, then the ``topk_candidates`` best (per level, or per class for SSDLite);
        3. decode the kept deltas against their anchors and clip to the image;
        4. class-wise NMS (``torchvision.ops.batched_nms``, IoU ``nms_thresh``), keep ``detections_per_img``;
        5. labels minus ``label_offset`` (0-based classes for every head).
        """
        from torchvision.ops import batched_nms

        if params is None:
            raise ExportError("detection post-processing needs the sidecar's 'postprocess' parameters")
        head_cls = get_head("detection", params["head"]).model_class
        assert head_cls is not None
        if not isinstance(outputs, Mapping):
            outputs = dict(zip((*head_cls.raw_outputs, "anchors"), outputs))
        raw = {k: _tensor(v) for k, v in outputs.items()}
        anchors = raw["anchors"]
        coder = _coder(params["box_coder"])
        shape = tuple(int(v) for v in params["image_size"])
        thresh, topk = float(params["score_thresh"]), int(params["topk_candidates"])
        per_level = [int(n) for n in params["num_anchors_per_level"]]
        if sum(per_level) != anchors.shape[0] or raw["cls_logits"].shape[1] != anchors.shape[0]:
            raise ExportError(f"outputs have {raw['cls_logits'].shape[1]} anchors, anchors {anchors.shape[0]}, the "
                              f"sidecar's levels {sum(per_level)}: these outputs do not belong to these parameters")
        results = []
        for i in range(raw["cls_logits"].shape[0]):
            one = {k: v[i] for k, v in raw.items() if k != "anchors"}
            boxes, scores, labels = head_cls.candidates(one, anchors, per_level, coder, shape, thresh, topk)
            keep = batched_nms(boxes, scores, labels, float(params["nms_thresh"]))[: int(params["detections_per_img"])]
            results.append({"boxes": boxes[keep], "scores": scores[keep],
                            "labels": labels[keep] - int(params["label_offset"])})
        return results

    @classmethod
    def scores(cls, raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-anchor, per-class scores from one image's raw outputs."""
        return torch.sigmoid(raw["cls_logits"])

    @classmethod
    def decode(cls, coder: Any, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return coder.decode_single(deltas, anchors)

    @classmethod
    def candidates(cls, raw: Mapping[str, torch.Tensor], anchors: torch.Tensor, per_level: list[int], coder: Any,
                   shape: tuple[int, int], thresh: float, topk: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per pyramid level: threshold, top-k, decode, clip (torchvision's RetinaNet/FCOS order)."""
        from torchvision.ops import clip_boxes_to_image

        scores_all = cls.scores(raw)
        boxes, scores, labels = [], [], []
        for s_lvl, d_lvl, a_lvl in zip(scores_all.split(per_level), raw["bbox_regression"].split(per_level),
                                       anchors.split(per_level)):
            num_classes = s_lvl.shape[-1]
            s = s_lvl.flatten()
            idx = torch.where(s > thresh)[0]
            s, order = s[idx].topk(min(topk, idx.numel()))
            idx = idx[order]
            a = torch.div(idx, num_classes, rounding_mode="floor")
            b = cls.decode(coder, d_lvl[a], a_lvl[a])
            boxes.append(clip_boxes_to_image(b.reshape(-1, 4), shape))
            scores.append(s)
            labels.append(idx % num_classes)
        return torch.cat(boxes), torch.cat(scores), torch.cat(labels)

    @classmethod
    def predict_record(cls, model: nn.Module, images: Sequence[torch.Tensor], class_names: Sequence[str],
                       score_threshold: float = 0.3, **options: Any) -> dict[str, Any]:
        det = model([images[0]])[0]
        keep = det["scores"] >= score_threshold
        return {"boxes": [{"box": [round(float(v), 2) for v in bx], "label": int(lb),
                           "class": class_names[int(lb)] if int(lb) < len(class_names) else str(int(lb)),
                           "score": float(s)}
                          for bx, lb, s in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]}

    # ------------------------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, backbone_name: str, num_classes: int = 80, in_chans: int = 3,
              pretrained_backbone: bool | str = False, min_size: int | None = None, max_size: int | None = None,
              fpn_channels: int = 256, out_indices: Sequence[int] | None = None,
              extra_channels: Sequence[int] = (512, 256, 256, 128), norm_eval: bool = False,
              **kwargs: Any) -> DetectionModel:
        """Detector on ``backbone_name``; remaining ``kwargs`` go to the torchvision model (``score_thresh``,
        ``nms_thresh``, ``detections_per_img``, ...). ``min_size``/``max_size`` are the internal resize (training
        passes ``data.img_size`` for both; torchvision's 800/1333 otherwise, 320 x 320 for SSDLite).
        ``fpn_channels`` is the FPN width (256 in the papers). ``norm_eval=True`` keeps the backbone's BatchNorm
        statistics frozen in training, as the official EMOv2 detection runs do."""
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        bkw: dict[str, Any] = dict(in_chans=in_chans, pretrained=pretrained_backbone, out_indices=out_indices)
        model = cls(cls._detector(backbone_name, num_classes, bkw, min_size, max_size, fpn_channels, extra_channels,
                                  kwargs), num_classes, in_chans)
        model.backbone.norm_eval = norm_eval
        return model

    @classmethod
    def _detector(cls, backbone_name: str, num_classes: int, bkw: dict[str, Any], min_size: int | None,
                  max_size: int | None, fpn_channels: int, extra_channels: Sequence[int],
                  kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError


def _retina_anchor_sizes(strides: Sequence[int], octave_base: float = 4.0) -> tuple[tuple[int, ...], ...]:
    """Three scales per octave, base size 4 x stride (RetinaNet paper, as torchvision and mmdet use)."""
    return tuple(tuple(int(octave_base * s * 2 ** (i / 3)) for i in range(3)) for s in strides)


@register_head("detection", "retinanet", needs=(8, 16, 32))
class RetinaNetModel(DetectionModel):
    """RetinaNet (EMOv2 / mmdet settings: extra convs on the input C5, 9 anchors of base size 4 x stride)."""

    score_formula = "sigmoid(cls_logits)"

    @classmethod
    def _detector(cls, backbone_name, num_classes, bkw, min_size, max_size, fpn_channels, extra_channels, kwargs):
        body = create_backbone(backbone_name, (8, 16, 32), **bkw)
        strides = [*body.reductions, body.reductions[-1] * 2, body.reductions[-1] * 4]
        backbone = FPNBackbone(body, fpn_channels, _p6p7(body.channels[-1], fpn_channels, on_input=True))
        anchors = AnchorGenerator(_retina_anchor_sizes(strides), ((0.5, 1.0, 2.0),) * len(strides))
        rhead = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
        return RetinaNet(backbone, num_classes, min_size=min_size or 800, max_size=max_size or 1333,
                         image_mean=list(body.mean), image_std=list(body.std), anchor_generator=anchors, head=rhead,
                         **kwargs)


@register_head("detection", "fcos", needs=(8, 16, 32))
class FCOSModel(DetectionModel):
    """FCOS (arXiv 1904.01355): P6/P7 from P5, one "anchor" per location whose size is the level's stride."""

    raw_outputs = ("cls_logits", "bbox_regression", "bbox_ctrness")
    score_formula = "sqrt(sigmoid(cls_logits) * sigmoid(bbox_ctrness))"

    @classmethod
    def _detector(cls, backbone_name, num_classes, bkw, min_size, max_size, fpn_channels, extra_channels, kwargs):
        body = create_backbone(backbone_name, (8, 16, 32), **bkw)
        strides = [*body.reductions, body.reductions[-1] * 2, body.reductions[-1] * 4]
        backbone = FPNBackbone(body, fpn_channels, _p6p7(fpn_channels, fpn_channels, on_input=False))
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        fhead = FCOSHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
        return FCOS(backbone, num_classes, min_size=min_size or 800, max_size=max_size or 1333,
                    image_mean=list(body.mean), image_std=list(body.std), anchor_generator=anchors, head=fhead,
                    **kwargs)

    @classmethod
    def scores(cls, raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(raw["cls_logits"]) * torch.sigmoid(raw["bbox_ctrness"]))

    @classmethod
    def decode(cls, coder: Any, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        return coder.decode(deltas, anchors)  # BoxLinearCoder


@register_head("detection", "ssdlite", needs=(16, 32))
class SSDLiteModel(DetectionModel):
    """SSDLite: stride-16/32 maps plus four extra blocks, softmax scores with a background class 0."""

    label_offset = 1
    score_formula = "softmax(cls_logits)[..., 1:] (index 0 is background)"
    topk_scope = "per class"

    @staticmethod
    def size_kwargs(img_size: int) -> dict[str, Any]:
        return {"min_size": int(img_size)}  # SSD's fixed size is min_size x max_size, max_size defaults to it

    @classmethod
    def _detector(cls, backbone_name, num_classes, bkw, min_size, max_size, fpn_channels, extra_channels, kwargs):
        min_size = min_size or 320
        max_size = max_size or min_size
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
        return SSD(backbone, anchors, (min_size, max_size), num_classes + 1, image_mean=list(body.mean),
                   image_std=list(body.std), head=ssd_head, **kwargs)

    @classmethod
    def candidates(cls, raw, anchors, per_level, coder, shape, thresh, topk):
        """Per class over all levels (torchvision's SSD order): softmax, threshold, top-k."""
        from torchvision.ops import clip_boxes_to_image

        probs = torch.softmax(raw["cls_logits"], dim=-1)
        decoded = clip_boxes_to_image(coder.decode_single(raw["bbox_regression"], anchors), shape)
        boxes, scores, labels = [], [], []
        for label in range(1, probs.shape[-1]):
            s = probs[:, label]
            keep = s > thresh
            s, b = s[keep], decoded[keep]
            s, order = s.topk(min(topk, s.numel()))
            boxes.append(b[order])
            scores.append(s)
            labels.append(torch.full_like(s, label, dtype=torch.int64))
        return torch.cat(boxes), torch.cat(scores), torch.cat(labels)


@register_head("detection", "fasterrcnn", needs=(8, 16, 32))
class FasterRCNNModel(DetectionModel):
    """Faster R-CNN with an FPN (stride 4 when the backbone has it); not exportable as a static graph."""

    label_offset = 1

    @classmethod
    def _detector(cls, backbone_name, num_classes, bkw, min_size, max_size, fpn_channels, extra_channels, kwargs):
        body = create_backbone(backbone_name, (4, 8, 16, 32), optional=(4,), **bkw)
        backbone = FPNBackbone(body, fpn_channels, LastLevelMaxPool())
        strides = [*body.reductions, body.reductions[-1] * 2]
        anchors = AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
        roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(body.reductions))], output_size=7, sampling_ratio=2)
        return FasterRCNN(backbone, num_classes + 1, min_size=min_size or 800, max_size=max_size or 1333,
                          image_mean=list(body.mean), image_std=list(body.std), rpn_anchor_generator=anchors,
                          box_roi_pool=roi_pool, **kwargs)

    @classmethod
    def _exportable(cls, model: nn.Module) -> DetectionModel:
        raise ExportError(
            "detection export supports retinanet, fcos and ssdlite heads; fasterrcnn is refused because its second "
            "stage is data-dependent inside the network (RPN proposals -> NMS -> RoIAlign on the surviving boxes -> "
            "box head), so there are no static raw outputs to stop at. Build the model with --head retinanet, fcos "
            "or ssdlite to export it")


def build_detection_model(backbone_name: str, head: str = "retinanet", **kwargs: Any) -> DetectionModel:
    """The ``head`` detector on ``backbone_name`` (see :meth:`DetectionModel.build` for the arguments)."""
    return get_head("detection", head).build(backbone_name, **kwargs)


class DetectionAdapter(nn.Module):
    """``images`` in [0, 1] -> raw head outputs + constant anchors (what the exported graph computes).

    ``images`` is ``(N, 3, H, W)``; the graph normalises with the detector's mean/std itself, with the same
    arithmetic as torchvision's transform. Outputs: ``cls_logits`` (N, A, C), ``bbox_regression`` (N, A, 4), the
    head's extra outputs (FCOS: ``bbox_ctrness`` (N, A, 1)) and ``anchors`` (A, 4) xyxy in input pixels. ``A`` is
    the sum over levels of ``H_l * W_l * anchors_per_location`` (``params["num_anchors_per_level"]``).
    """

    is_export_adapter = True

    def __init__(self, model: DetectionModel, input_size: Sequence[int]) -> None:
        super().__init__()
        det = model.detector
        c, h, w = (int(s) for s in input_size)
        self.raw_outputs = type(model).raw_outputs
        self.input_size = (c, h, w)
        self.backbone = det.backbone
        self.head = det.head
        t = det.transform
        self.register_buffer("mean", torch.as_tensor(t.image_mean, dtype=torch.float32)[:, None, None], False)
        self.register_buffer("std", torch.as_tensor(t.image_std, dtype=torch.float32)[:, None, None], False)
        anchors, per_level = _anchors(det, (c, h, w))
        # not named "anchors": the dynamo exporter names the constant after the buffer, clashing with the output
        self.register_buffer("anchor_boxes", anchors, False)
        self.num_anchors_per_level = per_level
        self.params = _postprocess_params(model, (h, w), per_level)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (images - self.mean) / self.std
        feats = self.backbone(x)
        feats = list(feats.values()) if isinstance(feats, Mapping) else [feats]
        out = self.head(feats)
        return (*(out[n] for n in self.raw_outputs), self.anchor_boxes.clone())


@torch.no_grad()
def _anchors(det: nn.Module, size: tuple[int, int, int]) -> tuple[torch.Tensor, list[int]]:
    """The detector's own anchor generator run once at the export size (they depend only on the shapes)."""
    from torchvision.models.detection.image_list import ImageList

    was_training = det.training
    det.eval()
    x = torch.zeros(1, *size)
    feats = det.backbone(x)
    feats = list(feats.values()) if isinstance(feats, Mapping) else [feats]
    anchors = det.anchor_generator(ImageList(x, [tuple(size[1:])]), feats)[0]
    det.train(was_training)
    hw = [int(f.shape[-2] * f.shape[-1]) for f in feats]
    per_loc = anchors.shape[0] // sum(hw)
    if per_loc * sum(hw) != anchors.shape[0]:
        raise ExportError(f"{anchors.shape[0]} anchors do not split evenly over feature maps of {hw} locations")
    return anchors.float().contiguous(), [n * per_loc for n in hw]


def _postprocess_params(model: DetectionModel, hw: tuple[int, int], per_level: list[int]) -> dict[str, Any]:
    """Everything :meth:`DetectionModel.postprocess_outputs` needs, read from the detector (JSON-serialisable)."""
    det = model.detector
    coder = det.box_coder
    if type(coder).__name__ == "BoxLinearCoder":
        coder_desc: dict[str, Any] = {"type": "BoxLinearCoder", "normalize_by_size": bool(coder.normalize_by_size)}
    else:
        coder_desc = {"type": "BoxCoder", "weights": [float(v) for v in coder.weights],
                      "bbox_xform_clip": float(coder.bbox_xform_clip)}
    t = det.transform
    divisible = int(t.size_divisible)
    if t.fixed_size is not None:
        identity = tuple(hw) == (int(t.fixed_size[1]), int(t.fixed_size[0]))
    else:
        scale = min(float(t.min_size[-1]) / min(hw), float(t.max_size) / max(hw))
        identity = scale == 1.0
    cls = type(model)
    return {
        "head": model.head,
        "score": cls.score_formula,
        "box_coder": coder_desc,
        "score_thresh": float(det.score_thresh),
        "nms_thresh": float(det.nms_thresh),
        "detections_per_img": int(det.detections_per_img),
        "topk_candidates": int(det.topk_candidates),
        "topk_scope": cls.topk_scope,
        "label_offset": cls.label_offset,
        "num_anchors_per_level": list(per_level),
        "image_size": [int(hw[0]), int(hw[1])],
        "box_format": "xyxy in input pixels, clipped to the image",
        "matches_torch_transform": bool(identity and hw[0] % divisible == 0 and hw[1] % divisible == 0),
        "torch_transform": {"min_size": list(t.min_size), "max_size": int(t.max_size),
                            "fixed_size": list(t.fixed_size) if t.fixed_size is not None else None,
                            "size_divisible": divisible},
    }


def _coder(desc: Mapping[str, Any]) -> Any:
    from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder

    if desc["type"] == "BoxLinearCoder":
        return BoxLinearCoder(normalize_by_size=bool(desc["normalize_by_size"]))
    return BoxCoder(tuple(desc["weights"]), bbox_xform_clip=float(desc.get("bbox_xform_clip", math.log(1000 / 16))))


def _tensor(x: Any) -> torch.Tensor:
    import numpy as np

    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
