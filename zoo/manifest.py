"""Reading ``weights_manifest.json``: which pretrained files exist for which model.

The manifest lives at the repository root, where the design card puts it; source and editable installs keep it
beside the ``zoo`` package, and ``ZOO_MANIFEST`` points anywhere else.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import WeightsError


def manifest_path() -> Path:
    """``$ZOO_MANIFEST`` if set, else the ``weights_manifest.json`` beside the ``zoo`` package."""
    env = os.environ.get("ZOO_MANIFEST")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights_manifest.json"


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
