"""Detection export: backbone + neck + head as one graph with raw outputs; decoding and NMS as Python.

Why split it. A torchvision detector's ``forward`` resizes the image, thresholds scores, takes a data-dependent
top-k per level, decodes boxes and runs NMS: the number of boxes depends on the data, which the exporters either
refuse or trace into a graph valid only for the traced image. Everything up to the head is static, so that part
is exported, and the rest is :func:`detection_postprocess` -- a few lines of torch/torchvision an app runs after
onnxruntime (or re-implements in Kotlin/Swift from the same sidecar parameters).

Graph (fixed input size ``H x W``; ``N`` is 1 or the dynamic ``batch``):

=====================  ===================  ==========================================================
name                   shape                meaning
=====================  ===================  ==========================================================
``images`` (input)     (N, 3, H, W)         RGB in ``[0, 1]``; the graph normalises with the backbone's
                                            mean/std itself (as torchvision's transform does)
``cls_logits``         (N, A, C)            raw class logits per anchor (SSDLite: C includes
                                            background at index 0, softmax; else sigmoid per class)
``bbox_regression``    (N, A, 4)            box deltas relative to ``anchors`` (coder in the sidecar)
``bbox_ctrness``       (N, A, 1)            FCOS only: centerness logits
``anchors``            (A, 4)               xyxy in input pixels, the same for every image (no batch)
=====================  ===================  ==========================================================

``A`` is the sum over pyramid levels of ``H_l * W_l * anchors_per_location``; the sidecar's
``postprocess.num_anchors_per_level`` gives the per-level counts (outputs are concatenated level after level, as
torchvision's heads return them), so per-level outputs are ``np.split(x, np.cumsum(counts)[:-1], axis=1)``.

Resize. The graph does *not* resize: the app resizes its image to ``H x W`` and scales the boxes back. The
PyTorch model resizes to its ``min_size``/``max_size`` inside; its detections equal the exported graph +
:func:`detection_postprocess` exactly when that resize is the identity at ``H x W`` (build the model with
``min_size=H, max_size=W`` for a square ``H = W``; SSDLite: ``H = W = min_size``, 320 by default) and ``H, W`` are
multiples of the transform's ``size_divisible`` (32; 1 for SSDLite), which the sidecar records as
``postprocess.matches_torch_transform``.

Faster R-CNN is refused: its second stage (RPN proposals -> NMS -> RoIAlign on the surviving boxes -> box head)
is data-dependent *inside* the network, so there is no static "raw output" to stop at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.errors import ExportError

#: detection heads with a static raw-output graph (head name -> torchvision class name, for the error message)
EXPORTABLE_HEADS = ("retinanet", "fcos", "ssdlite")


def _detector(model: nn.Module) -> tuple[nn.Module, str, int]:
    """(torchvision detector, head name, label offset) of a LightZoo ``DetectionModel`` (or a bare detector)."""
    det = getattr(model, "detector", model)
    head = getattr(model, "head_name", None) or type(det).__name__.lower()
    offset = int(getattr(model, "label_offset", 0))
    if head == "ssd":
        head = "ssdlite"
    if head == "fasterrcnn" or type(det).__name__ in ("FasterRCNN", "MaskRCNN", "KeypointRCNN"):
        raise ExportError(
            "detection export supports retinanet, fcos and ssdlite heads; fasterrcnn is refused because its second "
            "stage is data-dependent inside the network (RPN proposals -> NMS -> RoIAlign on the surviving boxes -> "
            "box head), so there are no static raw outputs to stop at. Build the model with --head retinanet, fcos "
            "or ssdlite to export it")
    if head not in EXPORTABLE_HEADS or not all(hasattr(det, a) for a in ("backbone", "head", "anchor_generator")):
        raise ExportError(f"cannot export detection model {type(model).__name__} (head {head!r}): expected a "
                          f"torchvision RetinaNet / FCOS / SSD built by zoo.create_model(..., task='detection')")
    return det, head, offset


def output_names(model: nn.Module) -> list[str]:
    """Graph output names for this detector (FCOS adds ``bbox_ctrness``)."""
    _, head, _ = _detector(model)
    return ["cls_logits", "bbox_regression", *(["bbox_ctrness"] if head == "fcos" else []), "anchors"]


class DetectionAdapter(nn.Module):
    """``images`` in [0, 1] -> raw head outputs + constant anchors (see the module docstring)."""

    is_export_adapter = True

    def __init__(self, model: nn.Module, input_size: Sequence[int]) -> None:
        super().__init__()
        det, head, offset = _detector(model)
        c, h, w = (int(s) for s in input_size)
        self.head_name = head
        self.label_offset = offset
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
        self.params = _postprocess_params(det, head, offset, (h, w), per_level)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the same arithmetic as GeneralizedRCNNTransform.normalize, so PyTorch and the graph see equal inputs
        x = (images - self.mean) / self.std
        feats = self.backbone(x)
        feats = list(feats.values()) if isinstance(feats, Mapping) else [feats]
        out = self.head(feats)
        extra = (out["bbox_ctrness"],) if self.head_name == "fcos" else ()
        return (out["cls_logits"], out["bbox_regression"], *extra, self.anchor_boxes.clone())


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


def _postprocess_params(det: nn.Module, head: str, offset: int, hw: tuple[int, int],
                        per_level: list[int]) -> dict[str, Any]:
    """Everything :func:`detection_postprocess` needs, read from the detector itself (JSON-serialisable)."""
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
    return {
        "head": head,
        "score": {"retinanet": "sigmoid(cls_logits)", "fcos": "sqrt(sigmoid(cls_logits) * sigmoid(bbox_ctrness))",
                  "ssdlite": "softmax(cls_logits)[..., 1:] (index 0 is background)"}[head],
        "box_coder": coder_desc,
        "score_thresh": float(det.score_thresh),
        "nms_thresh": float(det.nms_thresh),
        "detections_per_img": int(det.detections_per_img),
        "topk_candidates": int(det.topk_candidates),
        "topk_scope": "per class" if head == "ssdlite" else "per pyramid level",
        "label_offset": offset,
        "num_anchors_per_level": list(per_level),
        "image_size": [int(hw[0]), int(hw[1])],
        "box_format": "xyxy in input pixels, clipped to the image",
        "matches_torch_transform": bool(identity and hw[0] % divisible == 0 and hw[1] % divisible == 0),
        "torch_transform": {"min_size": list(t.min_size), "max_size": int(t.max_size),
                            "fixed_size": list(t.fixed_size) if t.fixed_size is not None else None,
                            "size_divisible": divisible},
    }


def _coder(desc: Mapping[str, Any]):
    from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder

    if desc["type"] == "BoxLinearCoder":
        return BoxLinearCoder(normalize_by_size=bool(desc["normalize_by_size"]))
    return BoxCoder(tuple(desc["weights"]), bbox_xform_clip=float(desc.get("bbox_xform_clip", math.log(1000 / 16))))


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))


def detection_postprocess(outputs: Mapping[str, Any] | Sequence[Any], params: Mapping[str, Any],
                          output_order: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """Raw outputs of an exported detector -> ``[{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}]``.

    ``outputs``: a dict by output name, or the list ``session.run(None, ...)`` returns (in the graph's output
    order, or ``output_order``). ``params``: the sidecar's ``postprocess`` block. The steps are torchvision's eval
    path for the head, in the same order, so the result equals the PyTorch model's detections:

    1. scores: RetinaNet ``sigmoid``; FCOS ``sqrt(sigmoid(cls) * sigmoid(ctrness))``; SSDLite ``softmax`` with
       background (index 0) dropped.
    2. keep scores ``> score_thresh``, then the ``topk_candidates`` best per pyramid level (SSDLite: per class).
    3. decode the kept deltas against their anchors (``BoxCoder`` / ``BoxLinearCoder``) and clip to the image.
    4. class-wise NMS (``torchvision.ops.batched_nms``, IoU ``nms_thresh``), keep ``detections_per_img``.
    5. labels minus ``label_offset`` (0-based classes for every head).

    Boxes are in the graph's input pixels; scale them by original / input size if the app resized the image.
    """
    from torchvision.ops import batched_nms

    if not isinstance(outputs, Mapping):
        names = list(output_order or ["cls_logits", "bbox_regression",
                                      *(["bbox_ctrness"] if params["head"] == "fcos" else []), "anchors"])
        outputs = dict(zip(names, outputs))
    head = params["head"]
    cls = _tensor(outputs["cls_logits"])
    reg = _tensor(outputs["bbox_regression"])
    anchors = _tensor(outputs["anchors"])
    ctr = _tensor(outputs["bbox_ctrness"]) if head == "fcos" else None
    coder = _coder(params["box_coder"])
    shape = tuple(int(v) for v in params["image_size"])
    thresh, topk = float(params["score_thresh"]), int(params["topk_candidates"])
    per_level = [int(n) for n in params["num_anchors_per_level"]]
    if sum(per_level) != anchors.shape[0] or cls.shape[1] != anchors.shape[0]:
        raise ExportError(f"outputs have {cls.shape[1]} anchors, anchors {anchors.shape[0]}, the sidecar's levels "
                          f"{sum(per_level)}: these outputs do not belong to these parameters")
    results = []
    for i in range(cls.shape[0]):
        if head == "ssdlite":
            boxes, scores, labels = _ssd_candidates(cls[i], reg[i], anchors, coder, shape, thresh, topk)
        else:
            boxes, scores, labels = _level_candidates(cls[i], reg[i], None if ctr is None else ctr[i], anchors,
                                                      per_level, coder, head, shape, thresh, topk)
        keep = batched_nms(boxes, scores, labels, float(params["nms_thresh"]))[: int(params["detections_per_img"])]
        results.append({"boxes": boxes[keep],
                        "scores": scores[keep], "labels": labels[keep] - int(params["label_offset"])})
    return results


def _level_candidates(cls: torch.Tensor, reg: torch.Tensor, ctr: torch.Tensor | None, anchors: torch.Tensor,
                      per_level: list[int], coder: Any, head: str, shape: tuple[int, int], thresh: float,
                      topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision.ops import clip_boxes_to_image

    boxes, scores, labels = [], [], []
    parts = [t.split(per_level) for t in (cls, reg, anchors)] + ([ctr.split(per_level)] if ctr is not None else [])
    for level in range(len(per_level)):
        logits, deltas, anc = parts[0][level], parts[1][level], parts[2][level]
        num_classes = logits.shape[-1]
        if head == "fcos":
            s = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(parts[3][level])).flatten()
        else:
            s = torch.sigmoid(logits).flatten()
        idx = torch.where(s > thresh)[0]
        s, order = s[idx].topk(min(topk, idx.numel()))
        idx = idx[order]
        a = torch.div(idx, num_classes, rounding_mode="floor")
        b = coder.decode(deltas[a], anc[a]) if head == "fcos" else coder.decode_single(deltas[a], anc[a])
        boxes.append(clip_boxes_to_image(b.reshape(-1, 4), shape))
        scores.append(s)
        labels.append(idx % num_classes)
    return torch.cat(boxes), torch.cat(scores), torch.cat(labels)


def _ssd_candidates(cls: torch.Tensor, reg: torch.Tensor, anchors: torch.Tensor, coder: Any,
                    shape: tuple[int, int], thresh: float, topk: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision.ops import clip_boxes_to_image

    probs = torch.softmax(cls, dim=-1)
    decoded = clip_boxes_to_image(coder.decode_single(reg, anchors), shape)
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
