"""LightM-UNet: a lightweight UNet with Mamba in the encoder, 2D and 3D.

Paper: Liao et al., "LightM-UNet: Mamba Assists in Lightweight UNet for Medical Image Segmentation",
arXiv:2403.05246. Official code: MrBlankness/LightM-UNet, commit 6b72e27 (``lightm-unet/nnunetv2/nets/
LightMUNet.py`` after the March 2024 update that made the stem and the head depthwise-separable and the decoder
blocks ``ResUpBlock``), trained there through ``nnUNetTrainerLightMUNet`` with init_filters 32,
blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1), GroupNorm(8), ReLU and bilinear/trilinear upsampling.

The network, stage by stage:

* stem: depthwise 3x3 (no bias) + pointwise 1x1 to 32 channels (no bias);
* encoder stage i (channels 32·2^i): stages 1-3 open with an RVM layer C/2 -> C followed by max-pool 2, then
  ``blocks_down[i]`` residual blocks ``x + RVM(act(GN(RVM(act(GN(x))))))``;
* RVM layer (Residual Vision Mamba): flatten the map to ``(B, HW, C)``, ``LN(Mamba(LN(x)) + s·x)`` with ONE shared
  LayerNorm used twice and a learned scalar s, then a linear C -> C_out, back to a map;
* decoder (3 steps): 1x1 conv C -> C/2 (no bias), x2 upsampling (bilinear/trilinear, align_corners False), add the
  encoder skip, ``ResUpBlock``: ``act(GN(dwsep3x3(act(GN(x))) + s·x))``;
* head: GN, ReLU, depthwise 1x1 + pointwise 1x1, both with bias.

Parameter counts with the official settings: 5,011,765 (2D, 3 -> 2 classes), 5,015,766 (3D, 1 -> 3 classes). The
paper's ~1.09M comes from thop, which counts only modules it calls: mamba_ssm's fused path multiplies by
``in_proj.weight``, ``x_proj``/``dt_proj``/``out_proj`` weights and ``A_log``/``D`` directly, so thop never sees
them. Our count is the real number of trained weights.

Our module and parameter names are the official ones (the MONAI ``Convolution`` wrappers survive as ``.conv``
children), so an nnU-Net checkpoint (``{'network_weights': state_dict, ...}``) loads strictly with no renaming.

Not in timm's classifier registry. LightM-UNet is a segmentation network: its output is a per-pixel mask at the
input's resolution, and its ``forward_features`` is the decoder's full-resolution map. timm's classifier contract
(pooled ``(B, num_classes)`` logits, ``reset_classifier(0)`` giving pooled ``(B, num_features)`` features,
``pool_size`` in the cfg, 2D ``(C, H, W)`` input sizes) would need a global pool the network does not have and
would make ``forward`` return something other than the mask; timm's model test-suite checks exactly that contract.
So the entrypoints register with ``@register_zoo_model(timm_classifier=False)``: they are in ``zoo.list_models()``
and ``zoo.create_model("lightm_unet_2d", ...)`` builds them (``zoo.registry.create_timm_model`` underneath, with
timm's ``build_model_with_cfg`` machinery: ``features_only``, ``pretrained_cfg`` tags, ``checkpoint_filter_fn``),
but ``timm.create_model`` does not know them and timm's suite does not run over them.

As a backbone: ``zoo.create_model('lightm_unet_2d', features_only=True)`` (and zoo's segmentation, detection and
change heads, which build it that way) returns the four encoder stages (32/64/128/256 channels at strides
1/2/4/8) and drops the decoder. ``torch.fx``/torchvision feature extraction traces the network: each RVM layer and
the input check are FX leaves (``torch.fx.wrap`` and timm's ``register_notrace_function``), since the selective
scan inside is a loop over the sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import is_exportable
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_notrace_function,
)
from timm.models._features import feature_take_indices
from torch import nn

from ..errors import InputShapeError
from ..layers.mamba import Mamba
from ..registry import get_pretrained_cfg, register_zoo_model

__all__ = ["LightMUNet", "RVMLayer", "ResVMBlock", "ResUpBlock"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def _max_of_window_views(x: torch.Tensor) -> torch.Tensor:
    """2x(2x)2 / stride-2 max pooling of even-sized maps as the maximum of the window's strided views.

    A maximum is exact in any order (NaN propagates as in the pooling kernel), so the result is bit-identical;
    PyTorch's CPU pooling computes indices it then drops and, on the NCHW maps the Mamba layers hand back, costs
    10-20x more (23 of LightM-UNet-2D's ~600 ms at 256², 2 threads)."""
    views = [x]
    for dim in range(2, x.dim()):
        views = [v.narrow(dim, start, v.shape[dim] - start)[(slice(None),) * dim + (slice(None, None, 2),)]
                 for v in views for start in (0, 1)]
    out = views[0]
    for v in views[1:]:
        out = torch.maximum(out, v)
    return out


@register_notrace_function
def _window_max_pool(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The encoder's 2x(2x)2 max pool: :func:`_max_of_window_views` in inference on even maps, the pooling op in
    training (tie gradients follow its first-index rule), on odd maps and under the export switch. An FX leaf: the
    choice depends on the tensor, which symbolic tracing cannot branch on."""
    if is_exportable() or (torch.is_grad_enabled() and x.requires_grad) or any(s % 2 for s in x.shape[2:]):
        return F.max_pool2d(x, 2, 2) if dims == 2 else F.max_pool3d(x, 2, 2)
    return _max_of_window_views(x)


torch.fx.wrap("_window_max_pool")


class _WindowMaxPoolMixin:
    """``nn.MaxPool{2,3}d(2, 2)`` (the official module, no weights) whose forward is :func:`_window_max_pool`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = 2 if isinstance(self, nn.MaxPool2d) else 3
        if (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices) \
                not in ((2, 2, 0, 1, False, False), ((2,) * dims, (2,) * dims, 0, 1, False, False)):
            return super().forward(x)  # only the encoder's 2x(2x)2 / stride-2 pool has the window-view form
        return _window_max_pool(x, dims)


class WindowMaxPool2d(_WindowMaxPoolMixin, nn.MaxPool2d):
    pass


class WindowMaxPool3d(_WindowMaxPoolMixin, nn.MaxPool3d):
    pass


_POOL = {2: WindowMaxPool2d, 3: WindowMaxPool3d}
_UPSAMPLE_MODE = {2: "bilinear", 3: "trilinear"}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


class ConvUnit(nn.Sequential):
    """A bare convolution held under ``.conv``, the name MONAI's ``Convolution(conv_only=True)`` gives it, so the
    official state_dict keys (``convInit.0.conv.weight``) are ours too. 'Same' padding for odd kernels."""

    def __init__(self, spatial_dims: int, in_chs: int, out_chs: int, kernel_size: int = 3, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__()
        self.add_module("conv", _CONV[spatial_dims](in_chs, out_chs, kernel_size, padding=(kernel_size - 1) // 2,
                                                    groups=groups, bias=bias))


def dw_separable(spatial_dims: int, in_chs: int, out_chs: int, kernel_size: int = 3, bias: bool = False
                 ) -> nn.Sequential:
    """Depthwise kxk then pointwise 1x1 (the official ``get_dwconv_layer``); both convs share ``bias``."""
    return nn.Sequential(
        ConvUnit(spatial_dims, in_chs, in_chs, kernel_size, groups=in_chs, bias=bias),
        ConvUnit(spatial_dims, in_chs, out_chs, 1, bias=bias),
    )


class RVMLayer(nn.Module):
    """Residual Vision Mamba layer: Mamba over the flattened map, with a scaled residual, for any spatial rank.

    ``LN(Mamba(LN(x)) + skip_scale·x)`` then ``Linear(C -> C_out)``. The same LayerNorm (``norm``) is applied
    before and after, as in the official code. Half-precision input is computed in float32 there too.
    """

    def __init__(self, input_dim: int, output_dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_impl: str = "auto") -> None:
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim, d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rvm_forward(self, x)


@register_notrace_function
def _rvm_forward(layer: RVMLayer, x: torch.Tensor) -> torch.Tensor:
    """The RVM layer's computation, an FX leaf: the selective scan inside loops over the sequence in Python."""
    if x.dtype == torch.float16:  # the official layer upcasts fp16 input (its weights stay fp32)
        x = x.float()
    b = x.shape[0]
    spatial = x.shape[2:]
    x_flat = x.flatten(2).transpose(1, 2)  # (B, L, C)
    y = layer.mamba(layer.norm(x_flat)) + layer.skip_scale * x_flat
    y = layer.proj(layer.norm(y))
    return y.transpose(1, 2).reshape(b, layer.output_dim, *spatial)


torch.fx.wrap("_rvm_forward")


class ResVMBlock(nn.Module):
    """Encoder block: ``x + RVM2(act(GN2(RVM1(act(GN1(x))))))`` (official ``ResMambaBlock``)."""

    def __init__(self, spatial_dims: int, channels: int, num_groups: int = 8, scan_impl: str = "auto") -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = RVMLayer(channels, channels, scan_impl=scan_impl)
        self.conv2 = RVMLayer(channels, channels, scan_impl=scan_impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(self.act(self.norm1(x)))
        x = self.conv2(self.act(self.norm2(x)))
        return x + shortcut


class ResUpBlock(nn.Module):
    """Decoder block: ``act(GN2(dwsep3x3(act(GN1(x))) + skip_scale·x))`` -- note the residual is the block input
    and the last norm/activation come after the sum (official ``ResUpBlock``)."""

    def __init__(self, spatial_dims: int, channels: int, num_groups: int = 8, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = dw_separable(spatial_dims, channels, channels, kernel_size)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv(self.act(self.norm1(x))) + self.skip_scale * shortcut
        return self.act(self.norm2(x))


class Upsample(nn.Module):
    """x2 (bi/tri)linear upsampling with align_corners=False (MONAI's non-trainable ``UpSample``); no weights."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.mode = _UPSAMPLE_MODE[spatial_dims]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False)


@register_notrace_function
def _check_input(x: torch.Tensor, spatial_dims: int, in_chans: int, stride: int) -> torch.Tensor:
    """``x``, or ``InputShapeError`` unless it is (B, in_chans, *S) with every size in S a multiple of ``stride``.
    An FX leaf on the data path, so traced graphs keep the check (an unused result would be dropped as dead code)."""
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_chans:
        want = "(B, C, H, W)" if spatial_dims == 2 else "(B, C, D, H, W)"
        raise InputShapeError(f"LightM-UNet {spatial_dims}D expects {want} with C={in_chans}; got {tuple(x.shape)}")
    spatial = [int(s) for s in x.shape[2:]]
    if any(s % stride for s in spatial):
        fit = [-(-s // stride) * stride for s in spatial]
        raise InputShapeError(f"LightM-UNet needs every spatial size to be a multiple of {stride}; got "
                              f"{tuple(spatial)}, pad to e.g. {tuple(fit)} (nnU-Net pads patches the same way)")
    return x


torch.fx.wrap("_check_input")


class LightMUNet(nn.Module):
    """LightM-UNet for ``spatial_dims`` 2 or 3: ``(B, in_chans, *S) -> (B, num_classes, *S)``.

    timm contract for a dense model: ``forward_features`` returns the decoder's last map (``num_features`` =
    init_filters channels, full resolution), ``forward_head`` is the segmentation head (GN, ReLU, depthwise-
    separable 1x1 to ``num_classes``), ``forward_intermediates``/``feature_info`` expose the 4 encoder stages.
    Every spatial size must be a multiple of 8 (three max-pools whose outputs are added back after upsampling).
    """

    # `zoo export`'s default for this model: the TorchScript exporter turns each Mamba scan into one ONNX Loop in
    # seconds with dynamic H/W; the dynamo exporter takes minutes re-tracing the scans and fixes the spatial size
    preferred_onnx_exporter = "legacy"
    #: a complete segmentation network: zoo.heads' task registry describes it (export interface, preprocessing)
    task = "segmentation"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_chans: int = 3,
        num_classes: int = 2,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        num_groups: int = 8,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_impl: str = "auto",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries, "
                             f"got {len(blocks_up)}")
        self.spatial_dims = spatial_dims
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.init_filters = init_filters
        self.num_groups = num_groups
        self.num_features = self.head_hidden_size = init_filters
        self.stride = 2 ** (len(blocks_down) - 1)
        self.grad_checkpointing = False
        mamba_kw = dict(d_state=d_state, d_conv=d_conv, expand=expand, scan_impl=scan_impl)

        self.convInit = dw_separable(spatial_dims, in_chans, init_filters)
        # nnU-Net's trainer leaves dropout off (dropout_prob=None); when asked for, it follows the stem as there
        self.dropout = _DROPOUT[spatial_dims](drop_rate) if drop_rate > 0 else nn.Identity()
        self.down_layers = nn.ModuleList()
        self.feature_info = []
        for i, depth in enumerate(blocks_down):
            chs = init_filters * 2 ** i
            if i > 0:  # RVM layer C/2 -> C, then max-pool 2
                down = nn.Sequential(RVMLayer(chs // 2, chs, **mamba_kw), _POOL[spatial_dims](2, 2))
            else:
                down = nn.Identity()
            blocks = [ResVMBlock(spatial_dims, chs, num_groups, scan_impl) for _ in range(depth)]
            self.down_layers.append(nn.Sequential(down, *blocks))
            self.feature_info.append(dict(num_chs=chs, reduction=2 ** i, module=f"down_layers.{i}"))

        n_up = len(blocks_up)
        self.up_layers = nn.ModuleList()
        self.up_samples = nn.ModuleList()
        for i in range(n_up):
            chs = init_filters * 2 ** (n_up - i)
            self.up_layers.append(nn.Sequential(*[ResUpBlock(spatial_dims, chs // 2, num_groups)
                                                  for _ in range(blocks_up[i])]))
            self.up_samples.append(nn.Sequential(ConvUnit(spatial_dims, chs, chs // 2, 1), Upsample(spatial_dims)))
        self.conv_final = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Sequential(
            nn.GroupNorm(self.num_groups, self.init_filters),
            nn.ReLU(inplace=True),
            dw_separable(self.spatial_dims, self.init_filters, num_classes, kernel_size=1, bias=True),
        )

    # --- timm contract -------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Mamba's A_log and D (flagged ``_no_weight_decay`` as in mamba_ssm)."""
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^convInit", blocks=r"^down_layers\.(\d+)" if coarse else r"^down_layers\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.conv_final

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new segmentation head for ``num_classes`` (``global_pool`` is accepted for timm's API and ignored:
        the output is a dense map)."""
        self.num_classes = num_classes
        self.conv_final = self._make_head(num_classes)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        return _check_input(x, self.spatial_dims, self.in_chans, self.stride)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint_seq(stage, x)
        return stage(x)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the encoder stages, finest first."""
        x = self._check_input(x)
        x = self.dropout(self.convInit(x))
        feats = []
        for stage in self.down_layers:
            x = self._run_stage(stage, x)
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder from the encoder stages to the ``num_features``-channel full-resolution map."""
        x = feats[-1]
        for i, (up, blocks) in enumerate(zip(self.up_samples, self.up_layers)):
            x = blocks(up(x) + feats[-2 - i])
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.conv_final(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder stage outputs (``indices`` into the 4 stages) and, unless ``intermediates_only``, the
        ``forward_features`` map. ``norm`` has nothing to apply (the stages end un-normalised)."""
        if output_fmt not in ("NCHW", "NCDHW"):
            raise ValueError(f"output_fmt must be 'NCHW' (2D) or 'NCDHW' (3D), got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.down_layers), indices)
        x = self._check_input(x)
        x = self.dropout(self.convInit(x))
        feats, intermediates = [], []
        for i, stage in enumerate(self.down_layers):
            if (intermediates_only or stop_early) and i > max_index:
                break
            x = self._run_stage(stage, x)
            feats.append(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(feats) < len(self.down_layers) or len(self.up_layers) == 0:
            return x, intermediates
        return self.decode(feats), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep the encoder up to the last requested stage; with ``prune_head`` the decoder and head go too
        (a backbone for other heads needs neither)."""
        take_indices, max_index = feature_take_indices(len(self.down_layers), indices)
        self.down_layers = self.down_layers[: max_index + 1]
        if prune_head:
            self.up_layers = nn.ModuleList()
            self.up_samples = nn.ModuleList()
            self.reset_classifier(0)
        return take_indices



def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official nnU-Net LightM-UNet checkpoints -> our keys, which are the same names.

    ``zoo.checkpoint`` already unwraps ``network_weights`` and ``module.``; this also strips ``_orig_mod.`` (a
    ``torch.compile``d network, which nnU-Net v2 saves when compiling) and drops nothing else, so a wrong file
    fails the strict load loudly instead of loading half its weights.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("_orig_mod."):
            k = k[len("_orig_mod."):]
        out[k] = v
    return out


def _create_lightm_unet(variant: str, pretrained: bool = False, pretrained_cfg: Any = None,
                        **kwargs: Any) -> LightMUNet:
    # timm's builder reads a 2D (C, H, W) input_size only (it asserts three entries); a volume's (C, D, H, W) is
    # held back while building and set on the finished model's cfg
    volume = None
    if isinstance(pretrained_cfg, PretrainedCfg) and len(pretrained_cfg.input_size or ()) == 4:
        volume, pretrained_cfg = pretrained_cfg.input_size, dataclasses.replace(pretrained_cfg, input_size=None)
    model = build_model_with_cfg(
        LightMUNet, variant, pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )
    if volume is not None:
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "input_size": volume}
    return model


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 2, "input_size": (3, 256, 256), "pool_size": None, "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
        "first_conv": "convInit.0.conv", "classifier": "conv_final.2.1.conv",
        "license": "apache-2.0", "paper_ids": "arXiv:2403.05246",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # nnU-Net normalises each case itself (z-score / CT clipping), so the model sees already-normalised input
    "lightm_unet_2d.untrained": _cfg(),
    # a volume, (C, D, H, W): a 64^3 nnU-Net-style patch (nnU-Net plans the patch per dataset; 64^3 keeps the pure-
    # PyTorch scan affordable on a CPU); outside timm's registry, so timm's 2D (C, H, W) rule does not apply
    "lightm_unet_3d.untrained": _cfg(num_classes=3, input_size=(1, 64, 64, 64), mean=(0.0,), std=(1.0,)),
})

# Variant table: the official nnU-Net trainer's settings, differing only in spatial rank and data defaults.
_VARIANTS: dict[str, dict[str, Any]] = {
    "lightm_unet_2d": dict(spatial_dims=2, in_chans=3, num_classes=2),
    "lightm_unet_3d": dict(spatial_dims=3, in_chans=1, num_classes=3),
}


def _build(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> LightMUNet:
    if kwargs.get("pretrained_cfg") is None:  # outside timm's registry, timm cannot look the cfg up itself
        kwargs["pretrained_cfg"] = get_pretrained_cfg(variant)
    return _create_lightm_unet(variant, pretrained, **{**_VARIANTS[variant], **kwargs})


@register_zoo_model(timm_classifier=False)
def lightm_unet_2d(pretrained: bool = False, **kwargs: Any) -> LightMUNet:
    """LightM-UNet 2D, init_filters 32, blocks (1, 2, 2, 4)/(1, 1, 1): 5,011,765 params at 3 -> 2 classes."""
    return _build("lightm_unet_2d", pretrained, kwargs)


@register_zoo_model(timm_classifier=False)
def lightm_unet_3d(pretrained: bool = False, **kwargs: Any) -> LightMUNet:
    """LightM-UNet 3D, init_filters 32, blocks (1, 2, 2, 4)/(1, 1, 1): 5,015,766 params at 1 -> 3 classes."""
    return _build("lightm_unet_3d", pretrained, kwargs)
