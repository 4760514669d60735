"""What ``zoo info`` reports about a model: size, cost, feature pyramid, input size, known weights, heads."""

from __future__ import annotations

from typing import Any

from ..bench import count_macs, count_params
from ..manifest import entries_for
from ..registry import check_model_name, create_timm_model, model_family


def model_info(name: str, macs: bool = True, input_size: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Facts about a registered model, measured on a freshly built instance (no weights are downloaded).

    MACs are counted at ``input_size`` (channels first, no batch), else at the model's default input size
    (``(C, D, H, W)`` for volumetric models); a model without one reports no MACs rather than a guess.
    """
    check_model_name(name)
    model = create_timm_model(name, pretrained=False)
    model.eval()
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    input_size = tuple(input_size or cfg.get("input_size") or ())
    feature_info = getattr(model, "feature_info", None) or []
    info: dict[str, Any] = {
        "name": name,
        "family": model_family(name),
        "params": count_params(model),
        "num_classes": getattr(model, "num_classes", None),
        "num_features": getattr(model, "num_features", None),
        "input_size": input_size,
        "mean": cfg.get("mean"),
        "std": cfg.get("std"),
        "feature_channels": [f["num_chs"] for f in feature_info],
        "feature_reductions": [f["reduction"] for f in feature_info],
        "pretrained_tags": [e.get("tag") for e in entries_for(name)],
    }
    if macs and input_size:
        info["macs"] = count_macs(model, input_size)
    try:
        from ..heads import supported_heads
    except ImportError:  # heads not installed in this build
        pass
    else:
        info["heads"] = supported_heads(name)
    return info


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    lines = [f"{info['name']}  (family: {info['family']})"]
    lines.append(f"  params:             {info['params']:,}")
    if "macs" in info:
        size = "x".join(str(s) for s in info["input_size"][1:])
        lines.append(f"  MACs @ {size}:     {info['macs'] / 1e9:.4f} G")
    lines.append(f"  input size:         {tuple(info['input_size']) or 'no default (pass --input-size)'}")
    lines.append(f"  classes / features: {info['num_classes']} / {info['num_features']}")
    lines.append(f"  feature channels:   {info['feature_channels']}")
    lines.append(f"  feature reductions: {info['feature_reductions']}")
    tags = info["pretrained_tags"]
    lines.append(f"  pretrained weights: {', '.join(tags) if tags else 'none known'}")
    if "heads" in info:
        heads = "; ".join(f"{t}: {', '.join(h)}" for t, h in info["heads"].items())
        lines.append(f"  heads:              {heads or 'none (the 2D heads do not apply to this model)'}")
    return "\n".join(lines)
