"""The multi-scale encoder every task head sits on: ``timm.create_model(name, features_only=True)`` (through
``zoo.registry.create_timm_model``, which also builds LightZoo's models kept out of timm's registry).

Any timm model with ``features_only`` support works, LightZoo's own families included (they are registered into
timm). Heads ask for feature levels by *reduction* (stride), not by index, because index 0 is stride 2 in one
family and stride 4 in another; the paper settings ("RetinaNet on stages 2-4") are strides 8/16/32 everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputShapeError, ZooError


class FeatureBackbone(nn.Module):
    """A features_only timm model that returns only the levels a head asked for.

    Attributes ``channels`` and ``reductions`` describe the returned list, finest level first.
    """

    def __init__(self, body: nn.Module, keep: Sequence[int], in_chans: int,
                 resample_to: Sequence[int] | None = None) -> None:
        super().__init__()
        self.body = body
        info = body.feature_info
        self.keep = list(keep)
        self.channels = [info.channels()[i] for i in self.keep]
        self.reductions = [info.reduction()[i] for i in self.keep]
        # a plain ViT has one stride; its levels are resampled to these strides (ViTDet's simple feature pyramid)
        self.resample_to = list(resample_to) if resample_to else None
        if self.resample_to:
            self.reductions = list(self.resample_to)
        self.in_chans = in_chans
        cfg = dict(getattr(body, "pretrained_cfg", None) or {})
        #: the backbone's timm config: the task model's data config starts from it
        self.pretrained_cfg = cfg
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    norm_eval = False  # keep BatchNorm statistics frozen while training (mmdet's norm_eval, EMOv2's detectors)

    def train(self, mode: bool = True) -> FeatureBackbone:
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise InputShapeError(
                f"expected a batch (N, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        feats = self.body(x)
        out = [feats[i] for i in self.keep]
        if self.resample_to:
            h, w = x.shape[-2:]
            out = [F.interpolate(f, size=(math.ceil(h / r), math.ceil(w / r)), mode="bilinear", align_corners=False)
                   for f, r in zip(out, self.resample_to)]
        return out


def _feature_model(name: str, in_chans: int, pretrained: bool | str, **kwargs: Any) -> nn.Module:
    from ..registry import check_model_name, create_timm_model
    from ..weights import timm_pretrained_args

    check_model_name(name)
    weights = timm_pretrained_args(name, pretrained)  # timm's own loader, features_only included
    try:
        body = create_timm_model(name, features_only=True, in_chans=in_chans, **weights, **kwargs)
    except ZooError:
        raise
    except (RuntimeError, AssertionError, TypeError) as e:  # models without a feature pyramid (e.g. some ViTs)
        raise ConfigError(f"backbone {name!r} cannot be built with features_only=True ({e}); "
                          "dense heads need a multi-scale feature extractor") from e
    return body


def create_backbone(
    name: str,
    reductions: Sequence[int] | None = None,
    *,
    min_levels: int = 1,
    optional: Sequence[int] = (),
    in_chans: int = 3,
    pretrained: bool | str = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> FeatureBackbone:
    """Feature extractor on ``name`` returning the levels whose reductions are in ``reductions``.

    ``reductions=None`` keeps every level (``min_levels`` of them at least). ``out_indices`` goes straight to
    timm for users who want specific stages; the reduction filter is then applied to those. Reductions listed
    in ``optional`` are dropped silently when the backbone lacks them (a stride-4 level, for example).
    """
    fkw = dict(kwargs)
    if out_indices is not None:
        fkw["out_indices"] = tuple(out_indices)
    body = _feature_model(name, in_chans, pretrained, **fkw)
    have = list(body.feature_info.reduction())
    if reductions is not None and len(set(have)) == 1 and len(set(reductions)) > 1:
        # a plain ViT (e.g. DINOv2 via forward_intermediates): its last blocks become the pyramid the head reads
        wanted = [r for r in reductions if r not in optional] or list(reductions)
        if len(have) < len(wanted):
            raise ConfigError(f"backbone {name!r} gives {len(have)} feature levels; this head reads {len(wanted)} "
                              f"strides {wanted}: pass out_indices with {len(wanted)} blocks")
        return FeatureBackbone(body, list(range(len(have)))[-len(wanted):], in_chans, resample_to=wanted)
    if reductions is None:
        keep = list(range(len(have)))
    else:
        reductions = [r for r in reductions if r in have or r not in optional]
        missing = [r for r in reductions if r not in have]
        if missing:
            raise ConfigError(f"backbone {name!r} has feature reductions {have}; this head needs {list(reductions)} "
                              f"(missing {missing})")
        # the last level with each reduction (a stage's output rather than an intermediate of the same stride)
        keep = [max(i for i, r in enumerate(have) if r == want) for want in reductions]
    if len(keep) < min_levels:
        raise ConfigError(f"backbone {name!r} gives {len(keep)} feature level(s) {have}; this head needs "
                          f"at least {min_levels}")
    return FeatureBackbone(body, keep, in_chans)


def feature_reductions(name: str) -> list[int]:
    """Reductions of the default features_only levels of ``name`` (empty if it has none)."""
    try:
        body = _feature_model(name, 3, False)
    except ConfigError:
        return []
    return list(body.feature_info.reduction())
