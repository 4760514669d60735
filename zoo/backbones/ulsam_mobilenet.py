"""MobileNetV1 / MobileNetV2 with ULSAM (Ultra-Lightweight Subspace Attention Module).

Paper: Saini, Jha, Das, Mittal, Mohan, "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact
Convolutional Neural Networks", WACV 2020, arXiv:2006.15102. Official code: Nandan91/ULSAM (commit 9a07d68), which
ships only the module (``zoo.layers.ulsam.ULSAM``), no networks. The networks here follow the paper's ImageNet
table: a standard MobileNet in which some stride-1, shape-preserving layers are *replaced* by ULSAM (which is why
parameters and MACs go down).

``mobilenetv1_ulsam`` reproduces the row "MobileNet-V1 + ULSAM (g=4)" (paper: 3.9M params, 517M MACs, 70.43 top-1):
timm's ``mobilenetv1_100`` (4,231,976 params, 568.7M MACs; ReLU6, the same stage layout and key names, so that
model is the exact baseline) with one 14x14x512 depthwise-separable layer replaced by ULSAM(512, g=4), giving
3,965,748 params and ~516.6M MACs. The paper does not say which of the five identical 14x14x512 layers it
replaced, and all five give the same parameters and MACs; we replace the last one (flat depthwise-separable index
10, just before the stride-2 transition to 1024 channels), where the attention maps see the most context at 14x14.
Pass ``ulsam_positions=(6,)`` ... ``(9,)`` for another choice.

``mobilenetv2_ulsam`` reproduces the row "MobileNet-V2, blocks 12 and 15 replaced by ULSAM (g=4)" (paper: 2.96M
params, 261.88M MACs, 71.52 top-1): torchvision's MobileNetV2 1.0 (3,504,872 params; same ``features[i]`` indices
and key names) with the stride-1 residual blocks ``features[12]`` (14x14x96) and ``features[15]`` (7x7x160)
replaced by ULSAM, giving 3,067,904 params and ~262.6M MACs. The paper's parameter column sits ~0.1M lower in every
row (2.96M here) because its baseline MobileNetV2 is counted as 3.4M rather than torchvision's 3.5M; its MAC
column agrees within 0.3%. Other rows of the paper: ``ulsam_positions=(12,)`` 3,387,092; ``(15,)`` 3,185,684;
``(15, 16)`` 2,866,496; ``(12, 13, 15, 16)`` 2,630,936 params (paper: 2.54M / 223.77M MACs, 69.72 top-1).

Plain ``mobilenetv1_100`` / ``mobilenetv2_100`` baselines come from timm.

Both networks meet timm's classifier contract (timm's own ``tests/test_models.py`` runs over them, see
``.ci/timm_suite.sh``): ``reset_classifier(0, '')`` makes ``forward`` return the unpooled (B, C, H, W) map,
``device``/``dtype`` factory kwargs build on that device, and the input check is an FX leaf (timm's
``register_notrace_function`` and ``torch.fx.wrap``), so ``torch.fx``/torchvision feature extraction traces them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from timm.layers import BatchNormAct2d, create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_notrace_function
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from timm.models._features import feature_take_indices
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from ..errors import InputShapeError
from ..layers.factory_kwargs import with_factory_kwargs
from ..layers.ulsam import ULSAM, convert_official_ulsam
from ..registry import register_zoo_model

__all__ = ["MobileNetV1ULSAM", "MobileNetV2ULSAM"]

# MobileNetV1 1.0: per stage (stride of its first layer, output channels, number of depthwise-separable layers).
MOBILENETV1_STAGES: tuple[tuple[int, int, int], ...] = ((1, 64, 1), (2, 128, 2), (2, 256, 2), (2, 512, 6),
                                                        (2, 1024, 2))
# torchvision MobileNetV2 1.0 inverted residual setting: (expansion t, channels c, repeats n, first stride s).
MOBILENETV2_SETTING: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                                              (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                                              (6, 320, 1, 1))


def _check_positions(positions: Sequence[int], allowed: Sequence[int], what: str) -> tuple[int, ...]:
    """ULSAM keeps the shape, so it can only replace a stride-1 layer whose input and output channels agree."""
    positions = tuple(sorted(set(int(p) for p in positions)))
    bad = [p for p in positions if p not in allowed]
    if bad:
        raise ValueError(f"{what}: cannot replace position(s) {bad} by ULSAM (it keeps the shape); positions that "
                         f"are stride 1 with equal input and output channels: {list(allowed)}")
    return positions


@register_notrace_function
def _check_input(x: torch.Tensor, in_chans: int, name: str) -> torch.Tensor:
    """``x`` if it is a (B, in_chans, H, W) image, else ``InputShapeError``. An FX leaf on the data path, so traced
    graphs keep the check (a call whose result is unused would be dropped as dead code)."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise InputShapeError(f"{name} expects a (B, {in_chans}, H, W) image tensor, got {tuple(x.shape)}")
    return x


torch.fx.wrap("_check_input")


def _init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation for the MobileNet layers; ULSAM keeps PyTorch's defaults, as in the
    official module (kaiming fan-out would be far too large for its 1x1 depthwise convs)."""
    skip = {id(m) for u in model.modules() if isinstance(u, ULSAM) for m in u.modules()}
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class _ClassifierMixin:
    """The timm head contract shared by both networks (global pool -> dropout -> linear)."""

    num_classes: int
    num_features: int
    drop_rate: float
    global_pool: nn.Module
    classifier: nn.Module

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new linear classifier on the model's device and dtype; the pooling stays unless ``global_pool`` is
        given, and ``''`` turns it off (then ``forward`` returns the unpooled (B, C, H, W) map, timm's rule)."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                                              **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.classifier.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def no_weight_decay(self) -> set[str]:
        return set()


class MobileNetV1ULSAM(_ClassifierMixin, nn.Module):
    """MobileNetV1 (timm's ``mobilenetv1_100`` layout) with depthwise-separable layers replaced by ULSAM.

    ``ulsam_positions`` index the 13 depthwise-separable layers in order (0 = 32->64, ..., 6-10 = the five
    14x14x512 layers, 12 = 1024->1024); only stride-1 layers with equal in/out channels can be replaced.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, ulsam_positions: Sequence[int] = (10,),
                 num_splits: int = 4, drop_rate: float = 0.0, global_pool: str = "avg",
                 act_layer: Callable[..., nn.Module] = nn.ReLU6, bn_momentum: float = 0.9) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_splits = num_splits
        self.grad_checkpointing = False
        layers: list[tuple[int, int, int]] = []  # (in, out, stride) per depthwise-separable layer
        c_in = 32
        for stride, c_out, repeats in MOBILENETV1_STAGES:
            for i in range(repeats):
                layers.append((c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        allowed = [i for i, (ci, co, s) in enumerate(layers) if s == 1 and ci == co]
        self.ulsam_positions = _check_positions(ulsam_positions, allowed, "mobilenetv1_ulsam")

        self.conv_stem = nn.Conv2d(in_chans, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(32, act_layer=act_layer)
        stages, idx, reduction = [], 0, 2
        self.feature_info: list[dict[str, Any]] = []
        for s, (_, c_out, repeats) in enumerate(MOBILENETV1_STAGES):
            blocks: list[nn.Module] = []
            for _ in range(repeats):
                ci, co, stride = layers[idx]
                if idx in self.ulsam_positions:
                    blocks.append(ULSAM(ci, num_splits, bn_momentum=bn_momentum))
                else:
                    blocks.append(DepthwiseSeparableConv(ci, co, 3, stride=stride, noskip=True, pw_act=True,
                                                         act_layer=act_layer, norm_layer=nn.BatchNorm2d))
                idx += 1
            reduction *= MOBILENETV1_STAGES[s][0]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=c_out, reduction=reduction, module=f"blocks.{s}"))
        self.blocks = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = 1024
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        _init_weights(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv_stem|bn1", blocks=r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)")

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (64@/2, 128@/4, 256@/8, 512@/16, 1024@/32); ``indices`` select stages as in timm."""
        if output_fmt != "NCHW":
            raise ValueError("mobilenetv1_ulsam: only output_fmt='NCHW' is supported")
        x = _check_input(x, self.in_chans, "mobilenetv1_ulsam")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        intermediates = []
        x = self.bn1(self.conv_stem(x))
        stages = self.blocks if not stop_early else self.blocks[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x, self.in_chans, "mobilenetv1_ulsam")
        x = self.bn1(self.conv_stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x, flatten=True)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MobileNetV2ULSAM(_ClassifierMixin, nn.Module):
    """torchvision's MobileNetV2 1.0 with some ``features[i]`` inverted-residual blocks replaced by ULSAM.

    ``ulsam_positions`` are torchvision ``features`` indices; only the stride-1 residual blocks (3, 5, 6, 8, 9, 10,
    12, 13, 15, 16) keep the shape and can be replaced.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, ulsam_positions: Sequence[int] = (12, 15),
                 num_splits: int = 4, drop_rate: float = 0.2, global_pool: str = "avg",
                 bn_momentum: float = 0.9) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_splits = num_splits
        self.grad_checkpointing = False
        specs: list[tuple[int, int, int, int]] = []  # (in, out, stride, expansion) of features[1..17]
        c_in = 32
        for t, c, n, s in MOBILENETV2_SETTING:
            for i in range(n):
                specs.append((c_in, c, s if i == 0 else 1, t))
                c_in = c
        allowed = [i + 1 for i, (ci, co, s, _) in enumerate(specs) if s == 1 and ci == co]
        self.ulsam_positions = _check_positions(ulsam_positions, allowed, "mobilenetv2_ulsam")

        norm = nn.BatchNorm2d
        features: list[nn.Module] = [Conv2dNormActivation(in_chans, 32, stride=2, norm_layer=norm,
                                                          activation_layer=nn.ReLU6)]
        self.feature_info: list[dict[str, Any]] = []
        reduction = 2
        for i, (ci, co, s, t) in enumerate(specs):
            idx = i + 1
            if idx in self.ulsam_positions:
                features.append(ULSAM(ci, num_splits, bn_momentum=bn_momentum))
            else:
                features.append(InvertedResidual(ci, co, s, expand_ratio=t, norm_layer=norm))
            reduction *= s
            last_of_stage = idx == len(specs) or specs[idx][2] == 2
            if last_of_stage:
                self.feature_info.append(dict(num_chs=co, reduction=reduction, module=f"features.{idx}"))
        self.num_features = self.head_hidden_size = 1280
        features.append(Conv2dNormActivation(c_in, self.num_features, kernel_size=1, norm_layer=norm,
                                             activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        # feature taps: last block of each resolution (16@/2, 24@/4, 32@/8, 96@/16, 320@/32)
        self._tap_idx = [int(f["module"].split(".")[1]) for f in self.feature_info]
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        _init_weights(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^features\.0\.", blocks=r"^features\.(\d+)")

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs at each resolution (16@/2, 24@/4, 32@/8, 96@/16, 320@/32); the final 1x1 conv to 1280 only
        runs when the final features are asked for."""
        if output_fmt != "NCHW":
            raise ValueError("mobilenetv2_ulsam: only output_fmt='NCHW' is supported")
        x = _check_input(x, self.in_chans, "mobilenetv2_ulsam")
        take_indices, max_index = feature_take_indices(len(self._tap_idx), indices)
        taps = {self._tap_idx[i] for i in take_indices}
        last = self._tap_idx[max_index] if (stop_early or intermediates_only) else len(self.features) - 1
        intermediates = []
        for i, layer in enumerate(self.features):
            if i > last:
                break
            x = layer(x)
            if i in taps:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self._tap_idx), indices)
        self.features = self.features[:self._tap_idx[max_index] + 1]
        # the final 1x1 conv to 1280 is gone with the pruned blocks, so the head goes too
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x, self.in_chans, "mobilenetv2_ulsam")
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.features, x)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept torchvision's MobileNetV2 head name (``classifier.1``) and the official ULSAM module's
    per-subspace keys (``...subspaces.{i}.conv_dws.weight``), which are stacked into our fused layout."""
    out = {}
    for k, v in state_dict.items():
        if isinstance(model, MobileNetV2ULSAM) and k.startswith("classifier.1."):
            k = "classifier." + k[len("classifier.1."):]
        out[k] = v
    prefixes = sorted({k[:k.index("subspaces.")] for k in out if "subspaces." in k})
    for prefix in prefixes:
        out = convert_official_ulsam(out, prefix)
    return out


def _create(cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return build_model_with_cfg(
        with_factory_kwargs(cls), variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4), feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "classifier": "classifier", "license": "unknown",  # Nandan91/ULSAM ships no licence file
        "paper_ids": "arXiv:2006.15102", "origin_url": "https://github.com/Nandan91/ULSAM",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "mobilenetv1_ulsam.untrained": _cfg(first_conv="conv_stem"),
    "mobilenetv2_ulsam.untrained": _cfg(first_conv="features.0.0"),
})


@register_zoo_model
def mobilenetv1_ulsam(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Paper row "MobileNet-V1 + ULSAM (g=4)": 3,965,748 params, ~516.6M MACs at 224."""
    return _create(MobileNetV1ULSAM, "mobilenetv1_ulsam", pretrained, **dict(dict(ulsam_positions=(10,),
                                                                                  num_splits=4), **kwargs))


@register_zoo_model
def mobilenetv2_ulsam(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Paper row "MobileNet-V2, blocks 12 and 15 replaced by ULSAM (g=4)": 3,067,904 params, ~262.6M MACs."""
    return _create(MobileNetV2ULSAM, "mobilenetv2_ulsam", pretrained, **dict(dict(ulsam_positions=(12, 15),
                                                                                  num_splits=4), **kwargs))
