"""Parameter-efficient fine-tuning (PEFT) of any LightZoo or timm model: LoRA and bottleneck adapters.

Why: lightweight backbones are mostly *adapted* to a new domain with little data. Training a few added
parameters on frozen base weights (PeftCD for remote-sensing change detection puts LoRA and adapters into a
shared siamese encoder) keeps the base intact, needs a fraction of the optimizer state, and the saved file holds
only what changed plus a reference to the base weights.

- ``lora``: a low-rank update ``W + (alpha / r) B A`` of the backbone's ``nn.Linear`` and ``nn.Conv2d`` weights,
  registered as a ``torch.nn.utils.parametrize`` parametrization (:class:`LoRAWeight`). Why not Hugging Face
  ``peft``'s layer wrappers (tried first): several LightZoo families read ``conv.weight`` directly instead of
  calling the conv (EMOv2 folds BatchNorm into it at inference, LWGANet concatenates strip-conv weights), so a
  wrapper layer is bypassed there: EMOv2 fails (``'Conv2d' object has no attribute 'stride'``) and a bypass
  elsewhere would drop the update silently. A parametrization changes what ``module.weight`` *is*, so every
  path sees the adapted weight, and merging is torch's own ``remove_parametrizations(leave_parametrized=True)``:
  :func:`merge_lora` returns a plain model with no extra ops for export. Same parameter count and initialisation
  as ``peft``'s LoRA (``r * (fan_in + out)`` per layer, ``A`` Kaiming-uniform, ``B`` zero). Grouped/depthwise
  convolutions are not targeted by default (a rank-``r`` update of a ``k x k`` depthwise kernel saves nothing);
  patterns may still name them. PHNN's hypercomplex layers (``PHConv2d``, ``PHMLinear``) are materialised into
  the ``nn.Conv2d`` / ``nn.Linear`` they compute first: their weights are frozen, so the Kronecker factorisation
  (which only saves parameters *to train*) buys nothing here.
- ``adapter``: a residual bottleneck adapter (Houlsby et al. 2019; the "Adapter" of PeftCD) after each backbone
  stage: ``y + up(GELU(down(y)))`` over the channel axis, ``up`` initialised to zero so training starts from the
  base model. ``peft`` offers no bottleneck adapter for arbitrary ``nn.Module`` models (its adapter-like methods,
  IA3 / LN tuning / BOFT, are different things) and AdapterHub's ``adapters`` only patches Hugging Face
  transformer classes, so it is defined here (two ``nn.Linear`` and a GELU). The GELU makes it non-mergeable:
  an exported adapter model keeps its (small) adapter ops.

The backbone is ``model.backbone`` / ``model.encoder`` for task models (one module for both dates in change
detection, so both images go through the same adapted weights) and the classifier itself otherwise, whose
``get_classifier()`` is the head. What trains: the added modules, plus the head (``train_head``) and the
backbone's normalisation layers (``train_norms``); frozen normalisation layers run in eval mode.

Adapter checkpoints (:func:`adapter_state_dict`) hold every tensor except the frozen base parameters, and the
sidecar's ``peft`` entry names the base weights (a checkpoint file and its sha256, or a pretrained tag) plus a
sha256 of the frozen parameters, so :func:`load_adapter_checkpoint` refuses a base that is not the one trained on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .errors import CheckpointError, ConfigError, InputShapeError

_logger = logging.getLogger(__name__)

METHODS = ("none", "lora", "adapter")
SPEC_ATTR = "zoo_peft"  # the applied spec, kept on the model (deep copies such as EMA carry it along)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


# ------------------------------------------------------------------------------------------------- anatomy
def backbone_prefix(model: nn.Module) -> str:
    """``"backbone."`` / ``"encoder."`` for task models, ``""`` for a plain classifier (the whole model)."""
    for attr in ("backbone", "encoder"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):  # an attribute, or a property (the detector's lives inside torchvision's)
            return next(name for name, m in model.named_modules() if m is sub) + "."
    return ""


def _in_backbone(name: str, prefix: str) -> bool:
    return not prefix or name.startswith(prefix) or name == prefix[:-1]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Parameters outside the backbone: the classifier, or a task model's decoder / FPN / detection head."""
    prefix = backbone_prefix(model)
    if prefix:
        return {n for n, _ in model.named_parameters() if not n.startswith(prefix)}
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _lora_candidates(model: nn.Module, grouped: bool = False) -> list[str]:
    prefix = backbone_prefix(model)
    head = head_parameter_names(model)
    out = []
    for name, m in model.named_modules():
        if not name or not _in_backbone(name, prefix):
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and (grouped or m.groups == 1)):
            if f"{name}.weight" not in head:
                out.append(name)
    return out


def _stage_modules(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, output channels) of each backbone stage, from the backbone's timm ``feature_info``."""
    prefix = backbone_prefix(model)
    backbone = model.get_submodule(prefix[:-1]) if prefix else model
    owner, owner_prefix = backbone, prefix
    body = getattr(backbone, "body", None)  # LightZoo's FeatureBackbone wraps the timm features_only model
    if isinstance(body, nn.Module) and getattr(backbone, "feature_info", None) is None:
        owner, owner_prefix = body, prefix + "body."
    info = getattr(owner, "feature_info", None)
    if hasattr(info, "module_name"):
        pairs = list(zip(info.module_name(), info.channels()))
    elif isinstance(info, list):  # a classifier's feature_info: a list of dicts
        pairs = [(f["module"], f["num_chs"]) for f in info if isinstance(f, Mapping) and "module" in f]
    else:
        return []
    names = dict(owner.named_modules())
    out = []
    for mod, ch in pairs:
        for cand in (mod, mod.replace(".", "_"), f"model.{mod}"):  # FeatureListNet / FeatureGetterNet naming
            if cand in names and cand:
                out.append((owner_prefix + cand, int(ch)))
                break
    return out


def _match(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _materialize_ph(model: nn.Module) -> None:
    from .layers.hypercomplex import PHConv2d, PHMLinear, materialize_ph_layers

    if any(isinstance(m, (PHConv2d, PHMLinear)) for m in model.modules()):
        materialize_ph_layers(model)


# ---------------------------------------------------------------------------------------------------- LoRA
class LoRAWeight(nn.Module):
    """A weight parametrization ``W -> W + (alpha / r) B A`` (LoRA, Hu et al. 2021), ``A`` over the flattened
    fan-in (``in * kh * kw`` for a convolution), ``B`` zero-initialised so training starts from the base model.

    A parametrization rather than a wrapper layer: the update lives in what ``module.weight`` *is*, so every code
    path that reads the weight sees it (see the module docstring), and merging is
    ``torch.nn.utils.parametrize.remove_parametrizations(..., leave_parametrized=True)``.
    Parameters: ``r * (fan_in + out)``, the same as a LoRA pair of layers (``peft``'s ``lora_A`` / ``lora_B``).
    """

    def __init__(self, shape: torch.Size, rank: int, alpha: float) -> None:
        super().__init__()
        fan_in = int(torch.Size(shape[1:]).numel())
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in))
        self.lora_B = nn.Parameter(torch.zeros(shape[0], rank))
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the reference LoRA / peft initialisation

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_B @ self.lora_A).view_as(weight)
        return weight + delta.to(weight.dtype) * self.scaling


# ------------------------------------------------------------------------------------------------- adapter
class BottleneckAdapter(nn.Module):
    """A residual bottleneck ``y + up(GELU(down(dropout(y))))`` over the channel axis of a stage's output.

    Channels are axis 1 of a 4-D ``(N, C, H, W)`` output (timm's feature contract for CNN stages; a 4-D
    channels-last stage output is refused, not guessed) and the last axis otherwise (``(N, L, C)`` tokens).
    ``up`` starts at zero, so the adapted model computes exactly the base model until it trains.
    """

    def __init__(self, channels: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.channels = channels
        self.down = nn.Linear(channels, rank)
        self.up = nn.Linear(rank, channels)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        channel_first = y.ndim == 4  # timm's feature contract: CNN stages give (N, C, H, W)
        if y.shape[1 if channel_first else -1] != self.channels:
            raise InputShapeError(f"adapter for {self.channels} channels got a stage output of shape "
                                  f"{tuple(y.shape)}; 4-D outputs must be (N, C, H, W), others (..., C)")
        z = y.movedim(1, -1) if channel_first else y
        z = self.up(F.gelu(self.down(self.dropout(z))))
        return y + (z.movedim(-1, 1) if channel_first else z)


def _insert_adapter(model: nn.Module, name: str, adapter: BottleneckAdapter) -> None:
    """Put ``adapter`` after module ``name``: appended to a Sequential / ModuleList stage (which families iterate
    over), otherwise as ``Sequential(stage, adapter)`` in its place."""
    stage = model.get_submodule(name)
    if isinstance(stage, (nn.Sequential, nn.ModuleList)):
        stage.append(adapter)
        return
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, nn.Sequential(stage, adapter))


# ---------------------------------------------------------------------------------------------------- apply
def apply_peft(model: nn.Module, method: str, *, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               target: Sequence[str] = (), train_norms: bool = False, train_head: bool = True) -> dict[str, Any]:
    """Add LoRA or adapters to ``model`` in place, freeze the base, and return the spec (kept on the model).

    ``target``: module-name globs (``fnmatch``, matched against full names such as ``backbone.body.stages_3.*``);
    empty: every dense ``nn.Linear`` / ``nn.Conv2d`` of the backbone (lora) or every backbone stage (adapter).
    Raises :class:`ConfigError` when a pattern matches nothing usable, naming a few names that would match.
    """
    if method not in METHODS or method == "none":
        raise ConfigError(f"train.peft.method must be one of {', '.join(METHODS[1:])} here; got {method!r}")
    if getattr(model, SPEC_ATTR, None):
        raise ConfigError("this model already carries PEFT modules; merge them (zoo.peft.merge_lora) first")
    _materialize_ph(model)
    prefix = backbone_prefix(model)
    params = dict(model.named_parameters())
    head = {id(params[n]) for n in head_parameter_names(model)}
    before = {id(p) for p in params.values()}
    if method == "lora":
        candidates = _lora_candidates(model)
        targets = _match(_lora_candidates(model, grouped=True), target) if target else candidates
        if not targets:
            raise ConfigError(_no_match("lora", target, candidates, "nn.Linear / nn.Conv2d"))
        if dropout:
            raise ConfigError("train.peft.dropout applies to adapters; LoRA here is a weight update (W + BA), "
                              "which has no input to drop: set train.peft.dropout=0")
        for name in targets:
            m = model.get_submodule(name)
            parametrize.register_parametrization(m, "weight", LoRAWeight(m.weight.shape, rank, alpha))
    else:
        stages = _stage_modules(model)
        chosen = dict(stages)
        targets = _match(list(chosen), target) if target else list(chosen)
        if not targets:
            raise ConfigError(_no_match("adapter", target, list(chosen), "backbone stages (feature_info)"))
        for name in targets:
            _insert_adapter(model, name, BottleneckAdapter(chosen[name], rank, dropout))

    added = set()
    for n, p in model.named_parameters():
        new = id(p) not in before
        p.requires_grad_(new or (train_head and id(p) in head))
        if new:
            added.add(n)
    if train_norms:
        for name, m in model.named_modules():
            if isinstance(m, _NORMS) and _in_backbone(name, prefix):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    spec = {"method": method, "rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets),
            "train_norms": train_norms, "train_head": train_head, "added": sorted(added), "frozen": frozen}
    setattr(model, SPEC_ATTR, spec)
    return spec


def _no_match(method: str, target: Sequence[str], candidates: Sequence[str], what: str) -> str:
    shown = ", ".join(candidates[:4]) + (" ..." if len(candidates) > 4 else "")
    if target:
        return (f"train.peft.target {list(target)} matches no {what} of this model (method {method}); "
                f"names that would match: {shown or 'none'}")
    return f"train.peft.method={method}: this model has no {what} to adapt"


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameters (counted once each), and the trainable share."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_fraction": trainable / max(total, 1)}


def frozen_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers whose parameters are all frozen: kept in eval mode, so their statistics stay put."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                out.append(m)
    return out


def peft_spec(model: nn.Module) -> dict[str, Any] | None:
    return getattr(model, SPEC_ATTR, None)


# ---------------------------------------------------------------------------------------------------- merge
@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base layer and drop the LoRA modules (in place); return the model.

    The result is a plain model (the same modules as the base, PHNN layers materialised) whose outputs equal the
    adapted model's up to float rounding; bottleneck adapters are not linear and stay (a warning says so).
    """
    for m in list(model.modules()):
        if parametrize.is_parametrized(m, "weight") and any(
                isinstance(p, LoRAWeight) for p in m.parametrizations["weight"]):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    spec = getattr(model, SPEC_ATTR, None)
    if spec is not None:
        if any(isinstance(m, BottleneckAdapter) for m in model.modules()):
            _logger.warning("bottleneck adapters are non-linear and cannot be merged; they stay in the model")
        else:
            delattr(model, SPEC_ATTR)
    return model


# ----------------------------------------------------------------------------------------------- checkpoints
def frozen_digest(model: nn.Module, names: Sequence[str]) -> str:
    """sha256 over the named tensors (names and bytes): identifies the frozen base an adapter was trained on."""
    state = model.state_dict()
    h = hashlib.sha256()
    for n in sorted(names):
        t = state[n].detach().cpu().contiguous()
        h.update(n.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_state_dict(model: nn.Module, base: Mapping[str, Any] | None) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, Any]]:
    """(tensors to save, the sidecar's ``peft`` entry) for a PEFT model.

    With a ``base`` reference (``{"checkpoint": path, "sha256": ...}`` or ``{"pretrained": "name.tag"}``) the
    frozen base parameters are left out; without one (a randomly initialised base cannot be rebuilt) every
    tensor is saved.
    """
    spec = getattr(model, SPEC_ATTR)
    state = model.state_dict()
    entry = {k: v for k, v in spec.items() if k not in ("frozen", "added")}
    if base:
        frozen = set(spec["frozen"])
        tensors = {k: v for k, v in state.items() if k not in frozen}
        entry.update(base=dict(base), frozen_sha256=frozen_digest(model, spec["frozen"]),
                     frozen_count=len(frozen))
    else:
        tensors = dict(state)
        entry["base"] = None
    return tensors, entry


def resolve_base_file(ref: Mapping[str, Any], next_to: str | os.PathLike | None = None) -> Path:
    """The base checkpoint named by an adapter sidecar: its recorded path, else its absolute path, else next to
    the adapter file; its sha256 must match."""
    cands = [Path(ref["checkpoint"]), Path(ref.get("checkpoint_abs", ref["checkpoint"]))]
    if next_to is not None:
        cands.append(Path(next_to).parent / Path(ref["checkpoint"]).name)
    for c in cands:
        if c.is_file():
            digest = file_sha256(c)
            if ref.get("sha256") and digest != ref["sha256"]:
                raise CheckpointError(f"base checkpoint {str(c)!r} has sha256 {digest[:12]}..., but the adapters "
                                      f"were trained on {ref['sha256'][:12]}...: use the original base file")
            return c
    raise CheckpointError(f"the adapters need their base checkpoint {ref['checkpoint']!r} (sha256 "
                          f"{str(ref.get('sha256'))[:12]}...), which was not found")


def load_adapter_checkpoint(model: nn.Module, path: str | os.PathLike, meta: Mapping[str, Any],
                            state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild a PEFT model from an adapter checkpoint: base weights, then the same PEFT, then the saved tensors.

    ``model`` is the plain model the sidecar describes (built by ``zoo.create_model``); it is changed in place.
    """
    from .checkpoint import load_checkpoint

    entry = meta["peft"]
    base = entry.get("base")
    if base and base.get("checkpoint"):
        load_checkpoint(model, resolve_base_file(base, path))
    elif base and base.get("pretrained"):
        from .factory import create_model

        fresh = create_model(meta["model"], pretrained=base["pretrained"], task=meta.get("task", "classification"),
                             head=meta.get("head"), num_classes=meta.get("num_classes"),
                             in_chans=meta.get("in_chans"), **meta.get("model_kwargs", {}))
        model.load_state_dict(fresh.state_dict())
    spec = apply_peft(model, entry["method"], rank=entry["rank"], alpha=entry["alpha"], dropout=entry["dropout"],
                      target=entry["targets"], train_norms=entry["train_norms"], train_head=entry["train_head"])
    own = model.state_dict()
    expected = set(own) - set(spec["frozen"]) if base else set(own)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"adapter checkpoint {str(path)!r} does not fit {meta.get('model')}: "
                              f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                              f"(e.g. {unexpected[:3]})")
    model.load_state_dict(dict(state), strict=False)
    if base:
        digest = frozen_digest(model, spec["frozen"])
        if digest != entry.get("frozen_sha256"):
            raise CheckpointError(f"the base weights rebuilt for {str(path)!r} differ from those its adapters were "
                                  f"trained on (frozen-parameter sha256 {digest[:12]}... vs "
                                  f"{str(entry.get('frozen_sha256'))[:12]}...)")
    model.eval()
    return model


__all__ = ["METHODS", "BottleneckAdapter", "LoRAWeight", "adapter_state_dict", "apply_peft", "backbone_prefix",
           "frozen_norm_layers", "head_parameter_names", "load_adapter_checkpoint", "merge_lora",
           "parameter_counts", "peft_spec"]
