"""Pretrained weights: resolve a manifest entry, download it into a cache, check its hash, load it.

Why not timm's own hub machinery: the official releases live on GitHub release pages and in a data repository,
not on the Hugging Face hub, several files carry no published hash, and we must refuse to load a file whose hash
differs from the manifest. So the flow here is: download to a temp file in the cache folder, hash it while
streaming, and only ``os.replace`` it into place when the hash matches. A mismatching download is deleted and
reported, never loaded. Files load with ``weights_only=True`` through the family's ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import family_filter_fn, load_state_dict_strict, read_state_dict
from .errors import WeightsError
from .manifest import entries_for, load_manifest

_logger = logging.getLogger(__name__)
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$ZOO_HOME/weights`` when set, else ``<torch hub dir>/lightzoo`` (``~/.cache/torch/hub/lightzoo``)."""
    home = os.environ.get("ZOO_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    import torch.hub

    return Path(torch.hub.get_dir()) / "lightzoo"


def offline() -> bool:
    """``ZOO_OFFLINE=1`` forbids network downloads (local paths and ``file://`` URLs still work)."""
    return os.environ.get("ZOO_OFFLINE", "").lower() in ("1", "true", "yes")


def find_entry(model: str, tag: str | None = None) -> dict[str, Any]:
    """The manifest entry for ``model`` and ``tag`` (the model's first entry when ``tag`` is None)."""
    entries = entries_for(model)
    if not entries:
        known = sorted({e.get("model") for e in load_manifest().get("entries", [])})
        raise WeightsError(
            f"no pretrained weights are known for {model!r}; models with weights: {', '.join(known) or 'none'}. "
            "Pass checkpoint_path=... to load a file you have."
        )
    if tag is None:
        return entries[0]
    for entry in entries:
        if entry.get("tag") == tag:
            return entry
    raise WeightsError(f"{model!r} has no weights tagged {tag!r}; known tags: {', '.join(e['tag'] for e in entries)}")


def cached_path(entry: dict[str, Any]) -> Path:
    """Where the file of ``entry`` lives once fetched: the cache folder + the file name in its URL."""
    name = Path(urllib.parse.urlparse(entry["url"]).path).name
    return cache_dir() / entry["model"] / name


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_local(source: str) -> bool:
    return source.startswith("file://") or "://" not in source


def _local_path(source: str) -> Path:
    if source.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    return Path(source).expanduser()


def _copy_into(source: str, tmp: Path) -> str:
    """Copy or download ``source`` into ``tmp``; returns the sha256 computed while streaming."""
    digest = hashlib.sha256()
    if _is_local(source):
        path = _local_path(source)
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} does not exist")
        reader = open(path, "rb")  # noqa: SIM115 (closed below, shared with the network branch)
    else:
        if offline():
            raise WeightsError(f"ZOO_OFFLINE is set; not downloading {source}")
        try:
            reader = urllib.request.urlopen(source, timeout=60)  # noqa: S310 (scheme checked: http/https only)
        except OSError as e:
            raise WeightsError(f"could not download {source}: {e}") from e
    with reader, open(tmp, "wb") as out:
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def fetch(entry: dict[str, Any], source: str | None = None, allow_unverified: bool | None = None) -> Path:
    """Make the file of ``entry`` present and verified in the cache; return its path.

    ``source`` overrides where it comes from (a local path or ``file://`` URL, for machines without internet);
    the manifest's hash is checked all the same. An entry with ``verified: false`` has no known hash: it is fetched
    only with ``allow_unverified=True`` (or ``ZOO_ALLOW_UNVERIFIED=1``), and the hash seen is printed so it can be
    added to the manifest.
    """
    dest = cached_path(entry)
    expected = entry.get("sha256")
    verified = bool(entry.get("verified", expected is not None)) and expected is not None
    if allow_unverified is None:
        allow_unverified = os.environ.get("ZOO_ALLOW_UNVERIFIED", "").lower() in ("1", "true", "yes")
    label = f"{entry['model']}:{entry.get('tag')}"

    if dest.exists():
        if not verified:
            return dest
        seen = sha256_of(dest)
        if seen == expected:
            return dest
        dest.unlink()
        _logger.warning("cached %s had sha256 %s, expected %s; deleted and fetching again", dest, seen, expected)

    if not verified and not allow_unverified:
        raise WeightsError(
            f"weights {label} have no verified sha256 in the manifest; fetch them only if you trust the source, "
            "with allow_unverified=True or ZOO_ALLOW_UNVERIFIED=1 (the hash seen will be printed)"
        )
    source = source or entry["url"]
    if offline() and not _is_local(source):
        raise WeightsError(
            f"ZOO_OFFLINE is set and {label} is not cached; put the file at {dest} "
            f"(or run `zoo weights fetch {label} --from FILE`)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        seen = _copy_into(source, tmp)
        if verified and seen != expected:
            raise WeightsError(
                f"sha256 mismatch for {label} from {source}: expected {expected}, got {seen}. "
                "The download was deleted; it may be corrupt or the file was replaced upstream."
            )
        if not verified:
            print(f"sha256 of unverified weights {label}: {seen} (add it to weights_manifest.json)")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _classifier_prefixes(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def load_pretrained(model: nn.Module, name: str, tag: str | None = None, source: str | None = None,
                    allow_unverified: bool | None = None) -> nn.Module:
    """Fetch the manifest's weights for ``name``/``tag`` and load them into ``model``.

    When the model was built with another number of classes than the weights, the backbone loads strictly and the
    classifier keeps its fresh initialisation (logged), as with timm's ``pretrained=True, num_classes=N``.
    """
    entry = find_entry(name, tag)
    path = fetch(entry, source=source, allow_unverified=allow_unverified)
    state = read_state_dict(path)
    if entry.get("format", "official-pth") != "safetensors":
        filter_fn = family_filter_fn(model)
        if filter_fn is not None:
            state = filter_fn(state, model)
    own = model.state_dict()
    dropped = []
    for prefix in _classifier_prefixes(model):
        keys = [k for k in state if k == prefix or k.startswith(prefix + ".")]
        if any(k in own and own[k].shape != state[k].shape for k in keys):
            for k in keys:
                state.pop(k)
            state.update({k: v for k, v in own.items() if k == prefix or k.startswith(prefix + ".")})
            dropped.append(prefix)
    if dropped:
        _logger.warning("%s:%s: classifier %s re-initialised for %s classes (weights have %s)", name,
                        entry.get("tag"), ", ".join(dropped), getattr(model, "num_classes", "?"),
                        entry.get("num_classes"))
    load_state_dict_strict(model, state, f"pretrained weights {name}:{entry.get('tag')} ({path})")
    return model


def copy_to_cache(entry: dict[str, Any], path: str | os.PathLike) -> Path:
    """Place a file the user downloaded elsewhere into the cache, after the same hash check as a download."""
    return fetch(entry, source=str(Path(path).resolve()), allow_unverified=True)


def clear_cached(entry: dict[str, Any]) -> bool:
    """Remove a cached file; returns whether one was there."""
    dest = cached_path(entry)
    if dest.exists():
        dest.unlink()
        return True
    return False


__all__ = ["cache_dir", "cached_path", "clear_cached", "copy_to_cache", "fetch", "find_entry", "load_pretrained",
           "sha256_of"]
