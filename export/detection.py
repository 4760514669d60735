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

The head classes in :mod:`zoo.heads.detection` own everything that differs between heads (the graph's outputs,
the score formula, candidate selection, the background slot); this module is the exporter's view of them.

Faster R-CNN is refused: its second stage (RPN proposals -> NMS -> RoIAlign on the surviving boxes -> box head)
is data-dependent *inside* the network, so there is no static "raw output" to stop at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from zoo.heads.detection import DetectionAdapter, DetectionModel

__all__ = ["DetectionAdapter", "detection_postprocess", "output_names"]


def output_names(model: nn.Module) -> list[str]:
    """Graph output names for this detector (FCOS adds ``bbox_ctrness``)."""
    return list(DetectionModel.graph_output_names(model))


def detection_postprocess(outputs: Mapping[str, Any] | Sequence[Any], params: Mapping[str, Any],
                          output_order: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """Raw outputs of an exported detector -> ``[{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}]``.

    ``outputs``: a dict by output name, or the list ``session.run(None, ...)`` returns (in the graph's output
    order, or ``output_order``). ``params``: the sidecar's ``postprocess`` block. The steps are torchvision's eval
    path for the head (:meth:`zoo.heads.detection.DetectionModel.postprocess_outputs`), so the result equals the
    PyTorch model's detections. Boxes are in the graph's input pixels; scale them by original / input size if the
    app resized the image.
    """
    if output_order is not None and not isinstance(outputs, Mapping):
        outputs = dict(zip(output_order, outputs))
    return DetectionModel.postprocess_outputs(outputs, params)
