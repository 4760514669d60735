"""Values derived from a module's weights (a BatchNorm folded into a conv, a composed matrix), kept on the module
and rebuilt only when one of those weights changes.

Inference-time rewrites such as BN folding depend only on weights, so computing them on every forward wastes time,
while computing them once and never again goes stale as soon as someone loads other weights after ``eval()``, steps an
optimizer, or edits a parameter in place. :class:`WeightDerivedCache` keeps each value together with a *stamp* of the
tensors it was built from — the tensor objects themselves, their version counters (bumped by every in-place write:
``load_state_dict``, ``copy_``, optimizer steps), data pointers, dtypes and devices (``.to()``, ``.half()``,
``p.data = ...``) — and rebuilds it when the stamp no longer matches. The cache lives on the module instance (never
at module level), is not part of the ``state_dict``, and a deep copy rebuilds its own on first use.

Tensors that cannot be stamped (meta tensors, inference-mode tensors, tensor subclasses such as the fake tensors
``torch.export`` traces with) are never cached: the value is computed from them directly, every call, which keeps
such traces exact.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["WeightDerivedCache", "weights_stamp"]

T = TypeVar("T")


def weights_stamp(tensors: Sequence[torch.Tensor | None]) -> tuple[Any, ...] | None:
    """What identifies the current contents of ``tensors``, or ``None`` when one of them cannot be stamped."""
    stamp: list[Any] = []
    for t in tensors:
        if t is None:
            stamp.append(None)
            continue
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.is_meta or t.is_inference():
            return None
        stamp.append((t, t._version, t.data_ptr(), t.dtype, t.device))
    return tuple(stamp)


def _same_stamp(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    # tensors compare by identity (``==`` on tensors is elementwise); the rest by value
    return len(a) == len(b) and all(
        x is y if x is None or y is None else x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a, b))


class WeightDerivedCache:
    """Per-module store of values computed from weights, each rebuilt when its source tensors change.

    ``get(key, tensors, build)`` returns ``build()``'s value for ``key``, computed again only when one of
    ``tensors`` changed since it was stored. ``build`` runs without autograd (the values are inference-only
    constants) and outside ``inference_mode`` (so they can serve later calls outside it).
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Any, ...], Any]] = {}

    def get(self, key: Hashable, tensors: Sequence[torch.Tensor | None], build: Callable[[], T]) -> T:
        stamp = weights_stamp(tensors)
        if stamp is None:
            return build()
        hit = self._entries.get(key)
        if hit is not None and _same_stamp(hit[0], stamp):
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        self._entries[key] = (stamp, value)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
