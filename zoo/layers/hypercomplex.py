"""Parameterized hypercomplex layers (PHM linear, PHC convolution).

Grassucci, Zhang, Comminiello, "PHNNs: Lightweight Neural Networks via Parameterized Hypercomplex Convolutions",
IEEE TNNLS 2022, arXiv:2110.04176; official code eleGAN23/HyperNets (commit c859ffe), ``layers/ph_layers.py`` and
``image-classification/hypercomplex_layers.py``.

A PH layer learns its weight as a sum of ``n`` Kronecker products, ``W = sum_i kron(A_i, F_i)``: the small
``A_i`` (n x n) learn the algebra's multiplication rule (for n=4 they can learn Hamilton's quaternion rule), the
``F_i`` hold the filters. With ``A`` of shape (n, n, n) and ``F`` of shape (n, out/n, in/n, k, k) the layer has
``n**3 + out * in * k**2 / n`` parameters, about 1/n of a real layer.

Compared with the official layers: while training (or whenever gradients are recorded) the weight is rebuilt
from the factors in every forward, so gradients reach ``A`` and ``F`` and the weight follows the parameters' device
and dtype (no ``.cuda()`` inside ``forward``). For inference the composed weight depends only on the parameters, so
it is built once -- when the layer enters ``eval()``, loads a state dict or moves device/dtype -- and reused by
every no-grad forward; a later in-place change of ``A`` or ``F`` (their version counters move) makes the layer
compose afresh until the next refresh, so a stale weight is never used. The bias is optional and, when present,
actually applied (the official ``PHConv`` allocates a bias but never passes it to ``conv2d``), and stride,
padding, dilation and groups are those of ``nn.Conv2d``. The factors keep the official initialisation
(Xavier-uniform on the factor tensors as shaped). The filter factor ``F`` is stored as the layer's ``weight``
parameter (``F`` is an alias), ``A`` under its official name: timm's model contract names a network's first conv
and classifier by a ``<module>.weight`` state-dict key, and timm's pretrained loader drops ``<classifier>.weight``
and ``.bias`` when the class count changes -- for a PHM classifier exactly the class-dependent factors (``A`` is
n x n x n whatever the class count). The full composed matrix is :meth:`composed_weight`. Official checkpoints
(``<layer>.A``, ``<layer>.F``) load through ``zoo.backbones.phnn.checkpoint_filter_fn``, which renames ``F``.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import is_exportable, register_notrace_function
from torch import nn

from ..errors import InputShapeError

__all__ = ["PHConv2d", "PHMLinear", "kron_weight", "materialize_ph_layers"]


def _check_n(n: int, what: str, dims: dict[str, int]) -> None:
    """Raise a ValueError that lists the ``n`` which would work when ``n`` does not divide every dimension."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what}: n must be a positive integer, got {n!r}")
    bad = {k: v for k, v in dims.items() if v % n}
    if bad:
        common = math.gcd(*dims.values())
        ok = [d for d in range(1, common + 1) if common % d == 0]
        detail = ", ".join(f"{k}={v}" for k, v in dims.items())
        raise ValueError(
            f"{what}: n={n} must divide {' and '.join(dims)} ({detail}); n values that work here: {ok}"
        )


def kron_weight(A: torch.Tensor, F_: torch.Tensor) -> torch.Tensor:
    """``sum_i kron(A[i], F[i])`` over the leading axis, with any trailing (kernel) axes of ``F`` carried along.

    ``A``: (n, n, n); ``F``: (n, p, q, *k). Result: (n*p, n*q, *k) with ``W[r*p + a, s*q + b] =
    sum_i A[i, r, s] * F[i, a, b]`` -- the block matrix whose (r, s) block is ``sum_i A[i, r, s] * F[i]``.
    One matmul over ``i`` instead of n Kronecker products, then a permute to interleave the block indices.
    """
    n = A.shape[0]
    p, q = F_.shape[1], F_.shape[2]
    kernel = F_.shape[3:]
    # (n*n, n) @ (n, p*q*k) -> (r, s, p, q, *k), summed over i by the matmul
    blocks = torch.matmul(A.reshape(n, n * n).t(), F_.reshape(n, -1)).reshape(n, n, p, q, *kernel)
    return blocks.transpose(1, 2).reshape(n * p, n * q, *kernel)


# The cached inference weight and the identity of what it was composed from: ``A`` and ``F``'s storage and version
# counters (a replaced parameter or an in-place edit changes one of them).
_WeightCache = tuple[torch.Tensor, tuple[int, int, int, int]]


def _source_key(A: torch.Tensor, F_: torch.Tensor) -> tuple[int, int, int, int]:
    return A.data_ptr(), A._version, F_.data_ptr(), F_._version


@register_notrace_function
def _ph_weight(A: torch.Tensor, F_: torch.Tensor, cache: _WeightCache | None) -> torch.Tensor:
    """The layer weight: the cached composition while it is current, else ``kron_weight(A, F)``.

    A leaf for FX (timm's notrace list and ``torch.fx.wrap``), so traced graphs call it with the live parameters.
    """
    if cache is not None and cache[1] == _source_key(A, F_):
        return cache[0]
    return kron_weight(A, F_)


@register_notrace_function
def _check_last_dims(x: torch.Tensor, dim: int, expected: int, what: str) -> torch.Tensor:
    """``x``, or ``InputShapeError`` unless ``x.shape[dim] == expected``. An FX leaf on the data path, so traced
    graphs keep the check (a call whose result is unused would be dropped as dead code)."""
    if x.shape[dim] != expected:
        raise InputShapeError(f"{what} expects {expected} input {'features' if dim == -1 else 'channels'}, "
                              f"got tensor of shape {tuple(x.shape)}")
    return x


torch.fx.wrap("_ph_weight")
torch.fx.wrap("_check_last_dims")


class _PHLayer(nn.Module):
    """Shared by the PH layers: the composed weight, and its inference cache (see the module docstring)."""

    A: nn.Parameter
    weight: nn.Parameter
    _cache: _WeightCache | None = None

    @property
    def F(self) -> nn.Parameter:  # noqa: N802  (the paper's and the official code's name)
        """The filter factor ``F`` (n, out/n, in/n, *kernel), stored as the ``weight`` parameter."""
        return self.weight

    def composed_weight(self) -> torch.Tensor:
        """The full weight, ``sum_i kron(A_i, F_i)``, rebuilt from ``A`` and ``F`` (what an ``nn.Conv2d`` /
        ``nn.Linear`` computing the same function holds)."""
        return kron_weight(self.A, self.F)

    def _forward_weight(self) -> torch.Tensor:
        # an exported graph composes from the factors, so the file stores F (n times fewer values than W)
        exporting = is_exportable()
        cache = None if self.training or torch.is_grad_enabled() or exporting else self._cache
        return _ph_weight(self.A, self.F, cache)

    @torch.no_grad()
    def refresh_weight_cache(self) -> None:
        """Compose the inference weight now (eval mode) or drop it (train mode). Called on ``eval()``/``train()``,
        after ``load_state_dict`` and after ``to()``/``half()``; call it after editing ``A``/``F`` in place in eval
        mode to stop the per-forward recomposition that such an edit triggers."""
        if self.training or self.A.is_inference() or self.F.is_inference():  # inference tensors have no versions
            self._cache = None
        else:
            self._cache = (kron_weight(self.A, self.F), _source_key(self.A, self.F))

    def train(self, mode: bool = True) -> _PHLayer:
        super().train(mode)
        self.refresh_weight_cache()
        return self

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202  (nn.Module's signature)
        self._cache = None
        out = super()._apply(fn, recurse)
        self.refresh_weight_cache()
        return out

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_weight_cache()

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy / unpickling: new tensors, so compose again
        super().__setstate__(state)
        self.refresh_weight_cache()


class PHConv2d(_PHLayer):
    """Parameterized hypercomplex 2-D convolution (PHC): an ``nn.Conv2d`` whose weight is ``sum_i kron(A_i, F_i)``.

    Args follow ``nn.Conv2d``; ``n`` is the hypercomplex dimension and must divide ``out_channels`` and
    ``in_channels / groups``. Parameters: ``n**3 + out_channels * in_channels / groups * kh * kw / n``
    (+ ``out_channels`` with ``bias=True``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], n: int = 4,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"PHConv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        _check_n(n, "PHConv2d", {"in_channels/groups": in_channels // groups, "out_channels": out_channels})
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.n, self.groups = in_channels, out_channels, n, groups
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.A = nn.Parameter(torch.empty(n, n, n, **dd))
        self.weight = nn.Parameter(torch.empty(n, out_channels // n, in_channels // groups // n, kh, kw, **dd))
        self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The official initialisation: Xavier-uniform on A and F with the shapes above.
        nn.init.xavier_uniform_(self.A)
        nn.init.xavier_uniform_(self.F)
        if self.bias is not None:
            fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_last_dims(x, -3, self.in_channels, "PHConv2d")
        return F.conv2d(x, self._forward_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, n={self.n}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation not in (1, (1, 1)):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}"


class PHMLinear(_PHLayer):
    """Parameterized hypercomplex multiplication layer (PHM): a linear layer with weight ``sum_i kron(A_i, F_i)``.

    ``n`` must divide ``in_features`` and ``out_features``. Parameters: ``n**3 + out*in/n`` (+ ``out`` with bias).
    """

    def __init__(self, in_features: int, out_features: int, n: int = 4, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        _check_n(n, "PHMLinear", {"in_features": in_features, "out_features": out_features})
        self.in_features, self.out_features, self.n = in_features, out_features, n
        self.A = nn.Parameter(torch.empty(n, n, n, **dd))
        self.weight = nn.Parameter(torch.empty(n, out_features // n, in_features // n, **dd))
        self.bias = nn.Parameter(torch.empty(out_features, **dd)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.A)
        nn.init.xavier_uniform_(self.F)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_last_dims(x, -1, self.in_features, "PHMLinear")
        return F.linear(x, self._forward_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, " \
               f"bias={self.bias is not None}"


@torch.no_grad()
def materialize_ph_layers(model: nn.Module) -> nn.Module:
    """Replace every PHConv2d / PHMLinear in ``model`` (in place) by an ``nn.Conv2d`` / ``nn.Linear`` holding the
    weight its factors build, and return the model.

    For deployment: an exported or scripted graph then holds plain convolutions (no Kronecker composition in the
    graph, whatever mode it was traced in), and the PH factors are no longer kept next to the composed weights.
    The materialized model computes the same function with the real layer's parameter count, so it is for
    inference and export, not for training or for saving as a PH checkpoint.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, PHConv2d):
            real: nn.Module = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                        child.padding, child.dilation, child.groups, bias=child.bias is not None,
                                        device=child.A.device, dtype=child.A.dtype)
        elif isinstance(child, PHMLinear):
            real = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                             device=child.A.device, dtype=child.A.dtype)
        else:
            materialize_ph_layers(child)
            continue
        real.weight.copy_(child.composed_weight())
        if child.bias is not None:
            real.bias.copy_(child.bias)
        real.train(child.training)
        setattr(model, name, real)
    return model
