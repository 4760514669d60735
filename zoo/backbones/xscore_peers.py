"""The xScore paper's peer set: eleven architectures as named configurations of about 2.5 M parameters.

The xScore paper (arXiv 2511.00335) ranks ConvMixer, EfficientNet, MobileNet, ShuffleNet, GhostNet, TinyNet,
MobileOne, FBNet, ConvNeXt, MobileViT and StarNet, each scaled to "about 2.5M parameters"; it publishes no
configurations, so the ones here are ours. Ten are timm families, built by timm's own constructors with the widths
or depths that land near 2.5 M; ShuffleNet has no timm family and is torchvision's ShuffleNetV2 (x1.5 widths),
given the few timm model methods the trainer and the MAC counter use.

Importing :mod:`zoo` registers every peer in timm's registry (``timm.create_model("peer_shufflenet")`` and
``zoo.create_model`` both build them). They are not LightZoo models: ``zoo.list_models()`` and timm's test-suite run
over our own families only. The peers train from scratch; asking for pretrained weights is an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

PEERS_ALIAS = "paper-peers"


@dataclass(frozen=True)
class Peer:
    """One architecture of the paper's peer set and how it is built."""

    name: str  # the name it is registered under in timm's registry
    paper_name: str  # the architecture as the paper names it
    source: str  # the timm variant, generator or torchvision class it is built from
    args: Mapping[str, Any]  # what differs from that source
    build: Callable[..., nn.Module] = field(repr=False, compare=False)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.source}({args})" if args else self.source


def _variant(variant: str, **args: Any) -> Callable[..., nn.Module]:
    """A registered timm variant with overridden constructor arguments (families whose entry points pass every
    keyword on)."""

    def build(**kwargs: Any) -> nn.Module:
        import timm

        return timm.create_model(variant, pretrained=False, **args, **kwargs)

    return build


def _generator(module: str, fn: str, variant: str, **args: Any) -> Callable[..., nn.Module]:
    """timm's own family generator (the function its registered variants call), for families whose variants fix
    the width or depth and refuse it as a keyword (ConvMixer, EfficientNet, GhostNet, FBNet)."""

    def build(**kwargs: Any) -> nn.Module:
        gen = getattr(importlib.import_module(module), fn)
        if fn == "_create_convmixer":  # its signature takes ``pretrained`` positionally
            return gen(variant, False, **args, **kwargs)
        return gen(variant, pretrained=False, **args, **kwargs)

    return build


def _mobileone(width_factors: tuple[float, float, float, float], stem_chs: int,
               num_conv_branches: int) -> Callable[..., nn.Module]:
    """timm's MobileOne (``ByobNet`` with ``mobileone`` blocks) at other stage widths. timm's variants are s0
    (1.16 M parameters after reparameterisation, 4.37 M while training with four branches) and s1 (4.8 M); between
    them, no variant is near 2.5 M on both counts. One branch per block, as the paper's S1-S4 use, keeps the
    training and the deployed counts within 2 % of each other."""

    def build(**kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg
        from timm.models.byobnet import ByobNet, ByoModelCfg, _mobileone_bcfg

        cfg = ByoModelCfg(blocks=_mobileone_bcfg(wf=width_factors, num_conv_branches=num_conv_branches),
                          stem_type="one", stem_chs=stem_chs)
        # mobileone_s0's pretrained config supplies only the data config (input size, mean, std); no weights load
        return build_model_with_cfg(ByobNet, "mobileone_s0", False, model_cfg=cfg,
                                    feature_cfg=dict(flatten_sequential=True), **kwargs)

    return build


class ShuffleNetV2Peer(nn.Module):
    """torchvision's ShuffleNetV2 with the parts of timm's model interface the trainer, ``zoo info`` and the MAC
    counter use: ``in_chans``, ``num_classes``, ``pretrained_cfg``, ``forward_features`` / ``forward_head``,
    ``get_classifier`` / ``reset_classifier``. The network itself is torchvision's, module for module."""

    def __init__(self, stages_repeats: tuple[int, int, int] = (4, 8, 4),
                 stages_out_channels: tuple[int, int, int, int, int] = (24, 176, 352, 704, 1024),
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__()
        from torchvision.models.shufflenetv2 import ShuffleNetV2

        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"ShuffleNetV2Peer got unexpected arguments: {sorted(kwargs)}")
        net = ShuffleNetV2(list(stages_repeats), list(stages_out_channels), num_classes=max(num_classes, 1))
        if in_chans != 3:
            first = net.conv1[0]
            net.conv1[0] = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding,
                                     bias=False)
        self.body = nn.Sequential(net.conv1, net.maxpool, net.stage2, net.stage3, net.stage4, net.conv5)
        self.num_features = self.head_hidden_size = stages_out_channels[-1]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.fc: nn.Module = net.fc if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = self.default_cfg = {
            "input_size": (in_chans, 224, 224), "interpolation": "bilinear", "crop_pct": 0.875,
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "num_classes": num_classes,
            "first_conv": "body.0.0", "classifier": "fc", "architecture": "peer_shufflenet",
        }
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"ShuffleNetV2Peer pools by average only, got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


# Parameter counts at 100 / 10 classes, measured with timm 1.0.31 and torchvision 0.29.1 (tests pin two exactly).
PAPER_PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("peer_convmixer", "ConvMixer", "convmixer (timm ConvMixer)",
         {"dim": 320, "depth": 19, "kernel_size": 9, "patch_size": 4},
         _generator("timm.models.convmixer", "_create_convmixer", "convmixer_768_32",
                    dim=320, depth=19, kernel_size=9, patch_size=4)),  # 2,522,980 / 2,494,090
    Peer("peer_efficientnet", "EfficientNet", "efficientnet_b0", {"channel_multiplier": 0.75},
         _generator("timm.models.efficientnet", "_gen_efficientnet", "efficientnet_b0",
                    channel_multiplier=0.75)),  # 2,467,540 / 2,381,050
    Peer("peer_mobilenet", "MobileNet", "mobilenetv2_100", {},
         _variant("mobilenetv2_100")),  # 2,351,972 / 2,236,682
    Peer("peer_shufflenet", "ShuffleNet", "torchvision ShuffleNetV2",
         {"stages_repeats": (4, 8, 4), "stages_out_channels": (24, 176, 352, 704, 1024)},
         ShuffleNetV2Peer),  # 2,581,124 / 2,488,874 (torchvision's x1_5 widths)
    Peer("peer_ghostnet", "GhostNet", "ghostnet_100", {"width": 0.75},
         _generator("timm.models.ghostnet", "_create_ghostnet", "ghostnet_100", width=0.75)),  # 2,578,006 / 2,462,716
    Peer("peer_tinynet", "TinyNet", "tinynet_b", {}, _variant("tinynet_b")),  # 2,577,662 / 2,462,372
    Peer("peer_mobileone", "MobileOne", "timm MobileOne (ByobNet)",
         {"width_factors": (1.0, 1.0, 1.75, 2.0), "stem_chs": 64, "num_conv_branches": 1},
         _mobileone((1.0, 1.0, 1.75, 2.0), 64, 1)),  # 2,671,332 / 2,579,082; 2,621,412 at 100 after reparam.
    Peer("peer_fbnet", "FBNet", "fbnetc_100", {"channel_multiplier": 0.8},
         _generator("timm.models.efficientnet", "_gen_fbnetc", "fbnetc_100",
                    channel_multiplier=0.8)),  # 2,566,564 / 2,387,914
    Peer("peer_convnext", "ConvNeXt", "convnext_atto", {"depths": (2, 2, 8, 2), "dims": (32, 64, 128, 256)},
         _variant("convnext_atto", depths=(2, 2, 8, 2), dims=(32, 64, 128, 256))),  # 2,480,068 / 2,456,938
    Peer("peer_mobilevit", "MobileViT", "mobilevit_xs", {}, _variant("mobilevit_xs")),  # 1,971,348 / 1,936,698
    Peer("peer_starnet", "StarNet", "starnet_s1", {}, _variant("starnet_s1")),  # 2,695,468 / 2,678,098
)}


def expand_models(names: list[str] | tuple[str, ...]) -> list[str]:
    """``paper-peers`` expanded to the peers' names, duplicates dropped, order kept."""
    out: list[str] = []
    for n in names:
        out.extend(PAPER_PEERS if n == PEERS_ALIAS else [n])
    return list(dict.fromkeys(out))


def _register() -> None:
    """Register every peer in timm's registry (idempotent)."""
    import timm
    from timm.models import register_model

    for peer in PAPER_PEERS.values():
        if timm.is_model(peer.name):
            continue

        def entry(pretrained: bool = False, _peer: Peer = peer, **kwargs: Any) -> nn.Module:
            if pretrained:
                raise ConfigError(f"{_peer.name} has no pretrained weights: the xScore peers train from scratch")
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's loader arguments
                kwargs.pop(key, None)
            return _peer.build(**kwargs)

        entry.__name__ = entry.__qualname__ = peer.name
        entry.__module__ = __name__
        entry.__doc__ = f"{peer.paper_name} of the xScore paper's peer set: {peer.describe()}."
        register_model(entry)


_register()
