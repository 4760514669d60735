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
        seqlen = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2·d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2N)
        dt, b_ssm, c_ssm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, L); its bias goes in the scan
        y = selective_scan(
            x, dt, -torch.exp(self.A_log.float()), b_ssm.transpose(1, 2), c_ssm.transpose(1, 2), self.D.float(),
            z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True, impl=self.scan_impl,
        )
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
                f"dt_rank={self.dt_rank}, scan_impl={self.scan_impl!r}")


def set_scan_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every ``Mamba`` inside ``module`` to one scan implementation (e.g. ``"sequential"`` to check results,
    ``"export"`` before tracing); returns the module."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"unknown scan impl {impl!r}; choose one of {', '.join(SCAN_IMPLS)}")
    for m in module.modules():
        if isinstance(m, Mamba):
            m.scan_impl = impl
    return module
