"""The Mamba block (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv:2312.00752)
in plain PyTorch.

Facts from state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py`` (class ``Mamba``): parameter names, shapes and
initialisation are the same, so a ``mamba_ssm.Mamba`` state_dict loads unchanged and a freshly built layer has
the same distribution of weights. The selective scan itself lives in ``zoo.layers.selective_scan`` and is chosen
with ``scan_impl`` (``"auto"`` uses mamba_ssm's CUDA kernel when it is installed and the input is on CUDA, the
one-loop export form when timm's ``is_exportable()`` switch is set, and otherwise the fast chunked form, on any
device, whose backward recomputes the states so that training memory stays linear in the sequence length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .selective_scan import SCAN_IMPLS, selective_scan

__all__ = ["Mamba", "SCAN_IMPLS", "set_scan_impl"]


class Mamba(nn.Module):
    """Selective state-space block: ``(batch, L, d_model) -> (batch, L, d_model)``.

    in_proj (no bias) splits into the SSM branch x and the gate z; x goes through a causal depthwise conv1d
    (kernel ``d_conv``, with bias) and SiLU; x_proj gives the input-dependent (Δ, B, C), Δ through dt_proj (whose
    bias is applied inside the scan, then softplus); A = -exp(A_log) is diagonal and real (S4D-real init,
    A[d, n] = -(n+1)); the scan output plus D·x is gated by silu(z) and projected back by out_proj.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if scan_impl not in SCAN_IMPLS:
            raise ValueError(f"unknown scan_impl {scan_impl!r}; choose one of {', '.join(SCAN_IMPLS)}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_impl = scan_impl

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        # causal depthwise conv: pad d_conv-1 on both sides and keep the first L outputs (as mamba_ssm does)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj.weight: keeps the variance of Δ's pre-activation at init
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # dt_proj.bias: softplus(bias) is a log-uniform dt in [dt_min, dt_max] (floored), so bias = softplus^-1(dt)
        dt = torch.exp(
            torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True  # an init pass that zeroes Linear biases must leave this one alone

        # S4D-real: A[d, n] = -(n + 1), stored as its log in fp32 whatever the module dtype
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # the "skip" term, fp32
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba expects (batch, L, d_model={self.d_model}); got {tuple(hidden_states.shape)}")
        # in_proj as its two halves: x and z each come out dense (b, L, d_inner), so the conv reads x in place
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        b_x, b_z = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
        x, z = F.linear(hidden_states, w_x, b_x), F.linear(hidden_states, w_z, b_z)
        if isinstance(x, torch.Tensor) and torch.is_grad_enabled() and x.requires_grad:
            # training: keep only the conv's input; the conv's output (what silu would save) is recomputed in the
            # backward, one (b, L, d_inner) tensor less per layer (~290 MB for a 64³ LightM-UNet-3D step) for a
            # 4-tap depthwise conv and a silu run again (~1% of the step)
            x = checkpoint(self._conv_act, x, use_reentrant=False)
        else:
            x = self._conv_act(x)
        x_dbl = self.x_proj(x)  # (b, L, dt_rank + 2N)
        dt, b_ssm, c_ssm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, L); its bias goes in the scan
        y = selective_scan(  # (b, channels, L) views of channels-innermost tensors, as mamba_ssm's layout
            x.transpose(1, 2), dt, -torch.exp(self.A_log.float()), b_ssm.transpose(1, 2), c_ssm.transpose(1, 2),
            self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            impl=self.scan_impl,
        )
        return self.out_proj(y.transpose(1, 2))

    def _conv_act(self, x: torch.Tensor) -> torch.Tensor:
        """silu(causal depthwise conv(x)), (b, L, d_inner) -> (b, L, d_inner)."""
        return self.act(_causal_depthwise_conv(x, self.conv1d)[:, :x.shape[1]])

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
                f"dt_rank={self.dt_rank}, scan_impl={self.scan_impl!r}")


def _causal_depthwise_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` (mamba_ssm's causal depthwise Conv1d, padded by d_conv - 1 on both sides) on a (b, L, channels)
    tensor, returned as (b, L + d_conv - 1, channels) with channels innermost.

    The same weights run as a Conv2d over a channels-last (b, channels, 1, L) view: no transpose of the sequence
    into (b, channels, L) and back (on CPU those two copies and oneDNN's channels-first depthwise kernel took 5x
    the time of this form), and the result is already in the layout ``x_proj`` and the scan read.
    """
    y = F.conv2d(x.unsqueeze(1).permute(0, 3, 1, 2), conv.weight.unsqueeze(2), conv.bias,
                 padding=(0, conv.padding[0]), groups=conv.groups)
    return y.permute(0, 2, 3, 1).squeeze(1)


def set_scan_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every ``Mamba`` inside ``module`` to one scan implementation (e.g. ``"sequential"`` to check results,
    ``"export"`` before tracing); returns the module."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"unknown scan impl {impl!r}; choose one of {', '.join(SCAN_IMPLS)}")
    for m in module.modules():
        if isinstance(m, Mamba):
            m.scan_impl = impl
    return module
