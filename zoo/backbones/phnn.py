"""PHC ResNets: ResNets whose convolutions (and, ImageNet-style, classifier) are parameterized hypercomplex layers.

Paper: Grassucci, Zhang, Comminiello, "PHNNs: Lightweight Neural Networks via Parameterized Hypercomplex
Convolutions", IEEE TNNLS 2022, arXiv:2110.04176. Official code: eleGAN23/HyperNets (commit c859ffe),
``image-classification/models/phc/phcresnet.py`` with ``image-classification/hypercomplex_layers.py`` and the
CIFAR data pipeline in ``image-classification/utils/dataloaders.py``. Layers: ``zoo.layers.hypercomplex``.

Two layouts:

* ``phc_resnet18_cifar`` / ``phc_resnet50_cifar`` reproduce the official CIFAR networks (``PHCResNet18``,
  ``PHCResNet50`` at n=4): 3x3 stride-1 stem, no max-pool, widths 64-512, a real ``nn.Linear`` classifier,
  10 classes, 32x32 input. The official pipeline feeds 4 channels: the normalised RGB image with a zero channel
  *in front* (``F.pad(x, (0, 0, 0, 0, 1, 0))`` after ``Normalize``); the model here adds that zero channel itself,
  so users pass ordinary 3-channel images (in general it prepends ``(-in_chans) % n`` zero channels so the stem's
  input channels divide by n; ``in_chans=4`` takes the official 4-channel tensors directly). The official
  ``PHConv`` allocates a bias that its forward never applies; those biases are dropped here (PHCResNet18: 2,810,762
  official parameters, 4,800 of them unused conv biases -> 2,805,962; PHCResNet50: 5,965,514 official, 26,560 unused
  -> 5,938,954) and ``checkpoint_filter_fn`` discards them when loading official weights. The official head is
  ``avg_pool2d(x, 4)``, a global average pool at 32x32 input; here it is a global average pool at any input size.
* ``phc_resnet18`` / ``phc_resnet50`` are torchvision's ResNet-18/50 (7x7 stride-2 stem, max-pool, stride on the 3x3
  conv of bottlenecks, 224x224, 1000 classes) with every convolution a PHC layer and the classifier a PHM layer,
  n=4: about 1/n of the real parameters (2,932,456 and 6,434,088 vs 11,689,512 and 25,557,032).

The classifier for any ``num_classes``: a PHM layer computes ``n`` blocks of ``num_classes / n`` outputs, so it
exists only when n divides ``num_classes``. ``phm_head=None`` (the default of every variant except the official CIFAR
ones, whose classifier is a real ``nn.Linear``) builds the paper's PHM classifier when n divides ``num_classes``
(the 1000 ImageNet classes: the counts above) and a real ``nn.Linear`` otherwise (10, 42, ... classes), instead of
padding the logits to a multiple of n with outputs nobody trains. ``phm_head=True`` insists on PHM (a ValueError
when n does not divide ``num_classes``), ``phm_head=False`` always gives ``nn.Linear``. ``reset_classifier`` follows the
same rule.

For inference the PH layers compose their weights once (on ``eval()``) instead of in every forward; see
``zoo.layers.hypercomplex``. The input check is an FX leaf (timm's ``register_notrace_function`` and
``torch.fx.wrap``), so ``torch.fx``/torchvision feature extraction traces the network and keeps the check.

Key names follow torchvision (``downsample``, ``fc``) and timm (a PH layer's filter factor ``F`` is its ``weight``,
so ``conv1.weight`` and ``fc.weight`` name the first conv and the classifier as timm's contract expects);
``checkpoint_filter_fn`` renames the official ``shortcut``, ``linear`` and ``<layer>.F`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_notrace_function
from timm.models._features import feature_take_indices
from torch import nn

from ..errors import InputShapeError
from ..layers.factory_kwargs import with_factory_kwargs
from ..layers.hypercomplex import PHConv2d, PHMLinear
from ..registry import register_zoo_model

__all__ = ["PHCResNet", "PHCBasicBlock", "PHCBottleneck"]

WIDTHS = (64, 128, 256, 512)


class PHCBasicBlock(nn.Module):
    """Two 3x3 PHC convs with BN and a residual; a 1x1 PHC conv + BN on the shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, n: int = 4) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = PHConv2d(in_chs, planes, 3, n, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = PHConv2d(planes, out_chs, 3, n, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)

    def zero_init_last(self) -> None:
        """timm's convention (torchvision: ``zero_init_residual``): zero the residual branch's last BN gain, so
        the block starts as its shortcut. Not the official PHC initialisation (which leaves it at 1); it also marks
        that norm for ``export.probe.make_informative``."""
        nn.init.zeros_(self.bn2.weight)


class PHCBottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as torchvision and the official code) -> 1x1 x4 PHC convs with BN."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, n: int = 4) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = PHConv2d(in_chs, planes, 1, n, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = PHConv2d(planes, planes, 3, n, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = PHConv2d(planes, out_chs, 1, n, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act(x + shortcut)

    def zero_init_last(self) -> None:
        """As :meth:`PHCBasicBlock.zero_init_last`, for the branch's last BN (``bn3``)."""
        nn.init.zeros_(self.bn3.weight)


def _shortcut(in_chs: int, out_chs: int, stride: int, n: int) -> nn.Module | None:
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(PHConv2d(in_chs, out_chs, 1, n, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


BLOCKS = {"basic": PHCBasicBlock, "bottleneck": PHCBottleneck}


@register_notrace_function
def _check_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``x`` if it is a (B, in_chans, H, W) image, else ``InputShapeError``. An FX leaf on the data path, so traced
    graphs keep the check (a call whose result is unused would be dropped as dead code)."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise InputShapeError(f"PHC ResNet expects a (B, {in_chans}, H, W) image tensor, got {tuple(x.shape)}")
    return x


torch.fx.wrap("_check_input")


def _make_pool(pool_type: str) -> SelectAdaptivePool2d:
    """timm's rule: flatten after a real pool, keep the (B, C, H, W) map when pooling is off (``''``)."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


class PHCResNet(nn.Module):
    """ResNet with PHC convolutions; ``stem='cifar'`` (official HyperNets) or ``stem='imagenet'`` (torchvision).

    Args:
        block: ``'basic'`` or ``'bottleneck'``.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        n: hypercomplex dimension; must divide the widths (64, ...), so a power of two up to 64.
        stem: ``'cifar'`` (3x3 stride 1, no max-pool) or ``'imagenet'`` (7x7 stride 2 + 3x3 max-pool).
        phm_head: classifier as a PHM layer (True: n must divide ``num_classes``), as ``nn.Linear`` (False), or
            PHM exactly when n divides ``num_classes`` (None, see the module docstring).
        in_chans: channels users pass; ``(-in_chans) % n`` zero channels are prepended for the stem.
    """

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), n: int = 4,
                 stem: str = "imagenet", num_classes: int = 1000, in_chans: int = 3, phm_head: bool | None = None,
                 drop_rate: float = 0.0, global_pool: str = "avg") -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or WIDTHS[0] % n:
            raise ValueError(f"PHC ResNet: n={n!r} must divide every channel width (64, 128, 256, 512); "
                             f"use one of 1, 2, 4, 8, 16, 32, 64")
        block_cls = BLOCKS[block]
        self.n, self.in_chans, self.num_classes, self.drop_rate = n, in_chans, num_classes, drop_rate
        self.phm_head = phm_head
        self.grad_checkpointing = False
        # The official pipeline prepends a zero channel to RGB so the stem sees n=4 channels.
        self.in_pad = (-in_chans) % n
        stem_in = in_chans + self.in_pad
        if stem == "cifar":
            self.conv1 = PHConv2d(stem_in, WIDTHS[0], 3, n, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
            stem_reduction = 1
        else:
            self.conv1 = PHConv2d(stem_in, WIDTHS[0], 7, n, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            stem_reduction = 2
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info: list[dict[str, Any]] = [dict(num_chs=WIDTHS[0], reduction=stem_reduction,
                                                        module="act1")]
        in_chs, reduction = WIDTHS[0], stem_reduction * (2 if stem == "imagenet" else 1)
        for i, (planes, depth) in enumerate(zip(WIDTHS, layers)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(in_chs, planes, stride if j == 0 else 1, n))
                in_chs = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"layer{i + 1}"))
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = _make_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = self._make_classifier(num_classes)

    def _make_classifier(self, num_classes: int, device: torch.device | None = None,
                         dtype: torch.dtype | None = None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        phm = self.phm_head if self.phm_head is not None else num_classes % self.n == 0
        if phm:
            if num_classes % self.n:
                raise ValueError(f"PHC ResNet: a PHM classifier needs num_classes divisible by n={self.n}, got "
                                 f"{num_classes}; use phm_head=None (PHM when n divides num_classes, else "
                                 f"nn.Linear) or phm_head=False (always nn.Linear)")
            return PHMLinear(self.num_features, num_classes, self.n, device=device, dtype=dtype)
        return nn.Linear(self.num_features, num_classes, device=device, dtype=dtype)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (PHM or linear by the ``phm_head`` rule) on the model's device and dtype;
        ``global_pool=''`` turns pooling off, so ``forward`` returns the unpooled (B, C, H, W) map."""
        if global_pool is not None:
            self.global_pool = _make_pool(global_pool)
        self.fc = self._make_classifier(num_classes, **get_device_dtype(self)).train(self.training)
        self.num_classes = num_classes

    def no_weight_decay(self) -> set[str]:
        return set()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x, self.in_chans)
        if self.in_pad:  # zero channel(s) in front, as the official CIFAR pipeline's Pad()
            x = F.pad(x, (0, 0, 0, 0, self.in_pad, 0))
        return self.act1(self.bn1(self.conv1(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem output and the four stage outputs (timm's ResNet convention: indices 0..4)."""
        if output_fmt != "NCHW":
            raise ValueError("PHC ResNet: only output_fmt='NCHW' is supported")
        take_indices, max_index = feature_take_indices(5, indices)
        intermediates = []
        x = self._stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        names = ("layer1", "layer2", "layer3", "layer4")
        if stop_early:
            names = names[:max_index]
        for i, name in enumerate(names, start=1):
            x = getattr(self, name)(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(5, indices)
        for name in ("layer1", "layer2", "layer3", "layer4")[max_index:]:
            setattr(self, name, nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        if max_index < 4:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self._stem(x))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            layer = getattr(self, name)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(layer, x)
            else:
                x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official HyperNets checkpoints -> our keys: ``shortcut`` -> ``downsample``, ``linear`` -> ``fc``, a PH
    layer's filter factor ``<layer>.F`` -> ``<layer>.weight`` (see ``zoo.layers.hypercomplex``), and the PHC conv
    biases (``<conv>.bias`` next to ``<conv>.A``) dropped, since the official forward never applies them.
    Our own state dicts pass through unchanged."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        k2 = k.replace(".shortcut.", ".downsample.")
        if k2.startswith("linear."):
            k2 = "fc." + k2[len("linear."):]
        if k2.endswith(".bias") and k2[:-len(".bias")] + ".A" in own and k2 not in own:
            continue  # an unused official PHConv bias
        if k2.endswith(".F") and k2[:-len(".F")] + ".A" in own:
            k2 = k2[:-len(".F")] + ".weight"
        out[k2] = v
    return out


def _create_phnn(variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return build_model_with_cfg(
        with_factory_kwargs(PHCResNet), variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3, 4), feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "conv1", "classifier": "fc", "license": "mit",
        "paper_ids": "arXiv:2110.04176", "origin_url": "https://github.com/eleGAN23/HyperNets",
        **kwargs,
    }


# The official CIFAR-10 pipeline: ToTensor, Normalize with these statistics, then the zero channel (added in-model).
_CIFAR = dict(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
              mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))

default_cfgs = generate_default_cfgs({
    "phc_resnet18.untrained": _cfg(),
    "phc_resnet50.untrained": _cfg(),
    "phc_resnet18_cifar.untrained": _cfg(**_CIFAR),
    "phc_resnet50_cifar.untrained": _cfg(**_CIFAR),
})

# Variant table: (block, layers, stem, phm_head, num_classes); phm_head None = PHM when n divides num_classes
_VARIANTS: dict[str, dict[str, Any]] = {
    "phc_resnet18": dict(block="basic", layers=(2, 2, 2, 2), stem="imagenet", phm_head=None, num_classes=1000),
    "phc_resnet50": dict(block="bottleneck", layers=(3, 4, 6, 3), stem="imagenet", phm_head=None, num_classes=1000),
    "phc_resnet18_cifar": dict(block="basic", layers=(2, 2, 2, 2), stem="cifar", phm_head=False, num_classes=10),
    "phc_resnet50_cifar": dict(block="bottleneck", layers=(3, 4, 6, 3), stem="cifar", phm_head=False,
                               num_classes=10),
}


def _build(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    return _create_phnn(variant, pretrained, **{**dict(n=4), **_VARIANTS[variant], **kwargs})


@register_zoo_model
def phc_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision ResNet-18 with PHC convs and a PHM classifier, n=4 (2,932,456 params at 1000 classes; a real
    linear classifier when 4 does not divide ``num_classes``)."""
    return _build("phc_resnet18", pretrained, kwargs)


@register_zoo_model
def phc_resnet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision ResNet-50 with PHC convs and a PHM classifier, n=4 (6,434,088 params at 1000 classes; a real
    linear classifier when 4 does not divide ``num_classes``)."""
    return _build("phc_resnet50", pretrained, kwargs)


@register_zoo_model
def phc_resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Official HyperNets PHCResNet18, n=4, CIFAR-10 (2,805,962 params: official minus unused conv biases)."""
    return _build("phc_resnet18_cifar", pretrained, kwargs)


@register_zoo_model
def phc_resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Official HyperNets PHCResNet50, n=4, CIFAR-10 (5,938,954 params: official minus unused conv biases)."""
    return _build("phc_resnet50_cifar", pretrained, kwargs)
