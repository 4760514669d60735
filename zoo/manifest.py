"""Reading ``weights_manifest.json``: which pretrained files exist for which model.

The manifest is the one place where released weights are described. The repository keeps it at its root (where
the design card puts it); ``zoo/weights_manifest.json`` is a link to it, which setuptools follows, so wheels and
sdists carry a real copy inside the package. ``ZOO_MANIFEST`` points anywhere else. Each family's timm
``pretrained_cfg`` tags are derived from the entries here (:func:`pretrained_cfgs`), so a new release is one new
entry and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import WeightsError

_logger = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent


def manifest_path() -> Path:
    """``$ZOO_MANIFEST`` if set, else the packaged ``zoo/weights_manifest.json`` (the repository root's copy when
    the link is not there, e.g. a checkout made without symlink support)."""
    env = os.environ.get("ZOO_MANIFEST")
    if env:
        return Path(env)
    packaged = _HERE / "weights_manifest.json"
    return packaged if packaged.is_file() else _HERE.parent / "weights_manifest.json"


def schema_path() -> Path:
    """The JSON Schema the manifest follows (shipped inside the package)."""
    return _HERE / "weights_manifest.schema.json"


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"weights manifest {path!r} cannot be read: {e}") from e


def load_manifest() -> dict[str, Any]:
    """The parsed manifest; an absent file means no weights are known (an empty manifest)."""
    path = manifest_path()
    if not path.exists():
        return {"schema_version": 1, "entries": []}
    return _load(str(path), path.stat().st_mtime)


def entries_for(model: str) -> list[dict[str, Any]]:
    """Manifest entries for one model name, in file order (the first is the default tag)."""
    return [e for e in load_manifest().get("entries", []) if e.get("model") == model]


def cfg_from_entry(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` dict: the family's ``base`` cfg with what the manifest says about one file.

    The URL goes in as timm's ``url`` (no ``hf_hub_id``: the releases are not on the Hugging Face hub). Our
    families' ``_create_*`` hand timm a verified local copy instead (``zoo.weights.verified_pretrained_kwargs``),
    so timm never downloads unchecked bytes; the URL is still what ``timm.list_models(pretrained=True)`` and the
    model's ``pretrained_cfg`` report.
    """
    size = tuple(entry["input_size"])
    cfg = {
        **base,
        "url": entry["url"],
        "num_classes": entry["num_classes"],
        "input_size": size,
        "mean": tuple(entry["mean"]),
        "std": tuple(entry["std"]),
        "license": entry.get("license", base.get("license")),
    }
    if base.get("pool_size") and tuple(base.get("input_size", ())) != size:
        cfg["pool_size"] = (size[1] // 32, size[2] // 32)
    return cfg


def pretrained_cfgs(base_cfgs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"model.tag": cfg}`` for ``timm.models.generate_default_cfgs``, one per manifest entry of each model.

    ``base_cfgs`` maps each registered model name to its family cfg (input size, crop, classifier name, ...).
    Models without manifest entries get one ``untrained`` tag. A model's first manifest entry comes first, so it is
    timm's default tag as it is ours. An unreadable manifest is logged and leaves every model untrained, so
    ``import zoo`` still works (fetching weights then names the problem).
    """
    try:
        entries = load_manifest().get("entries", [])
    except WeightsError as e:
        _logger.warning("%s; registering the models without pretrained tags", e)
        entries = []
    out: dict[str, dict[str, Any]] = {}
    for model, base in base_cfgs.items():
        mine = [e for e in entries if e.get("model") == model]
        for entry in mine:
            out[f"{model}.{entry['tag']}"] = cfg_from_entry(base, entry)
        if not mine:
            out[f"{model}.untrained"] = dict(base)
    return out
