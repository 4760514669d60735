"""Use LightZoo backbones (and any timm model) inside mmdetection 3.x configs.

Importing this module registers, in mmdet's ``MODELS`` registry,

- ``LightZooBackbone``: ``dict(type="LightZooBackbone", model_name="emov2_1m", out_indices=(1, 2, 3))`` for any
  LightZoo or timm name, and
- one alias per LightZoo model, e.g. ``dict(type="emov2_1m", out_indices=(1, 2, 3))``.

Each returns the tuple of multi-scale ``NCHW`` maps that mmdet necks (FPN, SSDNeck, ...) expect, in the order of
``out_indices``. In an mmdet config::

    custom_imports = dict(imports=["zoo.integrations.mmdet"], allow_failed_imports=False)
    model = dict(backbone=dict(type="emov2_1m", out_indices=(1, 2, 3), pretrained=True),  # EMOv2 RetinaNet
                 neck=dict(type="FPN", in_channels=[48, 80, 180], out_channels=256, start_level=0,
                           add_extra_convs="on_input", num_outs=5), ...)

A full detector needs mmdet's heads and necks, which import mmcv's compiled ops: install ``mmcv`` (with ops,
built for your torch) rather than ``mmcv-lite``. With only ``mmdet`` + ``mmengine`` + ``mmcv-lite`` (the
``lightzoo[mmdet]`` extra plus the no-deps step below), registration and ``MODELS.build`` of the backbone work,
and the torchvision-based detectors in :mod:`zoo.heads.detection` need no mmcv at all.

Installing: mmengine and mmcv(-lite) require the GUI wheel ``opencv-python``; albumentations requires
``opencv-python-headless``. Both wheels write the same ``cv2`` package, so having both leaves whichever was
installed last (the GUI one needs libGL) and uninstalling either removes ``cv2`` for both. Hence the two steps::

    pip install "lightzoo[mmdet]"          # mmdet 3.3 and the pure-Python requirements of mmengine/mmcv-lite
    pip install --no-deps "mmengine>=0.10,<0.11" "mmcv-lite>=2.0.0rc4,<2.2.0"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

from ..errors import ZooError

try:  # mmdet's registry and mmengine's BaseModule import without mmcv's compiled ops
    from mmdet.registry import MODELS
    from mmengine.model import BaseModule
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("zoo.integrations.mmdet needs mmdet>=3 and mmengine: pip install 'lightzoo[mmdet]' && "
                      "pip install --no-deps 'mmengine>=0.10,<0.11' 'mmcv-lite>=2.0.0rc4,<2.2.0' (--no-deps keeps "
                      f"albumentations' headless OpenCV; see the README's tasks section) (import failed: {e})") from e

from ..registry import list_models


class LightZooBackbone(BaseModule):
    """A ``features_only`` timm/LightZoo model as an mmdet backbone.

    ``out_indices`` index the model's ``feature_info`` (EMOv2/LWGANet: 0..3 = strides 4..32 for out_indices
    ``(0, 1, 2, 3)``). ``frozen`` freezes every backbone weight; ``norm_eval`` keeps BatchNorm in eval mode during
    training, as mmdet's ResNet configs do.
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] | None = None, pretrained: bool | str = False,
                 in_chans: int = 3, frozen: bool = False, norm_eval: bool = False,
                 init_cfg: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(init_cfg=init_cfg)
        from ..heads._backbone import create_backbone

        kw = dict(kwargs)
        body = create_backbone(model_name, None, in_chans=in_chans, pretrained=pretrained,
                               out_indices=tuple(out_indices) if out_indices is not None else None, **kw)
        self.body = body
        self.model_name = model_name
        self.channels = list(body.channels)
        self.reductions = list(body.reductions)
        self.norm_eval = norm_eval
        if frozen:
            for p in self.body.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body(x))

    def train(self, mode: bool = True) -> LightZooBackbone:
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def _alias(name: str) -> type:
    def __init__(self: LightZooBackbone, **kwargs: Any) -> None:
        if "model_name" in kwargs:
            raise ZooError(f"backbone type {name!r} fixes model_name; use type='LightZooBackbone' to choose one")
        LightZooBackbone.__init__(self, model_name=name, **kwargs)

    return type(f"LightZoo_{name}", (LightZooBackbone,), {"__init__": __init__, "__doc__": f"{name} for mmdet."})


def register_mmdet_backbones(names: Sequence[str] | None = None, force: bool = True) -> list[str]:
    """Register ``LightZooBackbone`` and one alias per name (default: every LightZoo model); returns the names."""
    MODELS.register_module(name="LightZooBackbone", module=LightZooBackbone, force=force)
    names = list(names) if names is not None else list_models()
    for n in names:
        if n not in list_models() and not timm.is_model(n):
            raise ZooError(f"{n!r} is not a registered model")
        MODELS.register_module(name=n, module=_alias(n), force=force)
    return ["LightZooBackbone", *names]


REGISTERED = register_mmdet_backbones()
