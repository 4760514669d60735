"""Pretrained weights: resolve a manifest entry, fetch it into a cache, check its content address, hand it to timm.

Loading is timm's: every released file is a ``pretrained_cfg`` tag (``emov2_5m.in1k_kd``) derived from
``weights_manifest.json``, and ``timm.create_model(name, pretrained=True)`` loads it through the family's
``checkpoint_filter_fn`` (``features_only=True`` and ``pretrained_cfg_overlay=dict(file=...)`` included).
What timm's downloader cannot do is check a hash that is not in the file name, and the official releases carry
none. So each family's ``_create_*`` calls :func:`verified_pretrained_kwargs` first: it downloads the tag's file
into our cache through a temp file, checks it, moves it into place only when it matches, and gives timm the local
path as the cfg's ``file``. timm never downloads unchecked bytes; a mismatching download is deleted and reported.

The check depends on what is known about the file:

- ``sha256`` in the manifest: the download's sha256 must equal it;
- ``git_blob`` (file in a git repository at a pinned commit): SHA-1 of ``b"blob <size>\\0" + bytes`` must equal the
  blob id git lists for it (``git ls-tree``), an address nobody can change without changing the commit;
- neither (``verified: false``): nothing to check against, so fetching needs an explicit opt-in, and the sha256
  of the first download is pinned in ``weights.lock.json`` in the cache folder; a later file that differs is
  refused with both hashes named (trust on first use).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import atomic_write_bytes, family_filter_fn, load_state_dict_strict, read_state_dict
from ..errors import WeightsError
from ..manifest import cfg_from_entry, entries_for, load_manifest

_logger = logging.getLogger(__name__)
_CHUNK = 1 << 20
LOCK_NAME = "weights.lock.json"


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


def _env_allows_unverified() -> bool:
    return os.environ.get("ZOO_ALLOW_UNVERIFIED", "").lower() in ("1", "true", "yes")


def _known_models() -> str:
    return ", ".join(sorted({e.get("model") for e in load_manifest().get("entries", [])})) or "none"


def find_entry(model: str, tag: str | None = None) -> dict[str, Any]:
    """The manifest entry for ``model`` and ``tag`` (the model's first entry when ``tag`` is None)."""
    entries = entries_for(model)
    if not entries:
        raise WeightsError(
            f"no pretrained weights are known for {model!r}; models with weights: {_known_models()}. "
            "Pass checkpoint_path=... to load a file you have."
        )
    if tag is None:
        return entries[0]
    for entry in entries:
        if entry.get("tag") == tag:
            return entry
    raise WeightsError(f"{model!r} has no weights tagged {tag!r}; known tags: {', '.join(e['tag'] for e in entries)}")


def cached_path(entry: Mapping[str, Any]) -> Path:
    """Where the file of ``entry`` lives once fetched: the cache folder + the file name in its URL."""
    name = Path(urllib.parse.urlparse(entry["url"]).path).name
    return cache_dir() / entry["model"] / name


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The id git gives the file's content: SHA-1 of ``b"blob <size>\\0"`` followed by the bytes."""
    digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path), usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(entry: Mapping[str, Any]) -> bool:
    """Whether the manifest gives the file a content address (a sha256 or a git blob id)."""
    return bool(entry.get("verified")) and bool(entry.get("sha256") or (entry.get("git_blob") or {}).get("sha1"))


def _label(entry: Mapping[str, Any]) -> str:
    return f"{entry['model']}:{entry.get('tag')}"


# ---------------------------------------------------------------------------------------------------------------
# Trust on first use for files without a content address
# ---------------------------------------------------------------------------------------------------------------

def lock_path() -> Path:
    """The lock file pinning the sha256 first seen for each unverified entry (``<cache>/weights.lock.json``)."""
    return cache_dir() / LOCK_NAME


def read_lock() -> dict[str, dict[str, Any]]:
    path = lock_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"weights lock file {str(path)!r} cannot be read ({e}); fix or delete it") from e
    return data.get("entries", {}) if isinstance(data, dict) else {}


def _pin(entry: Mapping[str, Any], sha256: str, source: str) -> None:
    pins = read_lock()
    pins[_label(entry)] = {"sha256": sha256, "url": entry["url"], "source": source,
                           "pinned": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    text = json.dumps({"lock_version": 1, "entries": pins}, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(lock_path(), lambda tmp: Path(tmp).write_text(text))


def unpin(entry: Mapping[str, Any]) -> bool:
    """Forget the pinned hash of ``entry`` (when its publisher really replaced the file); returns whether one was."""
    pins = read_lock()
    if pins.pop(_label(entry), None) is None:
        return False
    text = json.dumps({"lock_version": 1, "entries": pins}, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(lock_path(), lambda tmp: Path(tmp).write_text(text))
    return True


# ---------------------------------------------------------------------------------------------------------------
# Fetching and checking
# ---------------------------------------------------------------------------------------------------------------

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
        if not source.startswith("https://"):
            raise WeightsError(f"refusing to download weights over a non-https URL: {source}")
        try:
            reader = urllib.request.urlopen(source, timeout=60)  # noqa: S310 (https only, checked above)
        except OSError as e:
            raise WeightsError(f"could not download {source}: {e}") from e
    with reader, open(tmp, "wb") as out:
        for chunk in iter(lambda: reader.read(_CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def check_file(entry: Mapping[str, Any], path: str | os.PathLike, sha256: str | None = None,
               where: str | None = None) -> str:
    """Check ``path`` against what is known of ``entry`` (manifest sha256, git blob id, or the pinned hash).

    Returns the file's sha256. Raises :class:`WeightsError` naming the expected and the seen hash on a mismatch.
    ``sha256`` may be passed when already computed; ``where`` names the origin in the message.
    """
    seen = sha256 or sha256_of(path)
    origin = f" from {where}" if where else ""
    label = _label(entry)
    if is_verified(entry):
        expected = entry.get("sha256")
        if expected and seen != expected:
            raise WeightsError(
                f"sha256 mismatch for {label}{origin}: expected {expected}, got {seen}. "
                "The file was deleted; it may be corrupt or the file was replaced upstream."
            )
        blob = (entry.get("git_blob") or {}).get("sha1")
        if blob:
            got = git_blob_sha1(path)
            if got != blob:
                gb = entry["git_blob"]
                raise WeightsError(
                    f"git blob mismatch for {label}{origin}: {gb['repo']}@{gb['commit'][:12]}:{gb['path']} is blob "
                    f"{blob}, this file is {got} (sha256 {seen}). The file was deleted; it is not the released file."
                )
        return seen
    pinned = read_lock().get(label)
    if pinned and pinned.get("sha256") != seen:
        raise WeightsError(
            f"{label}{origin} has sha256 {seen}, but the first download you trusted had {pinned['sha256']} "
            f"(pinned in {lock_path()}). Refused and deleted. If the publisher really replaced the file, run "
            f"`zoo weights unpin {label}` and fetch it again."
        )
    return seen


def fetch(entry: Mapping[str, Any], source: str | None = None, allow_unverified: bool | None = None) -> Path:
    """Make the file of ``entry`` present and checked in the cache; return its path.

    ``source`` overrides where it comes from (a mirror URL, a local path or ``file://`` URL for machines without
    internet); it is checked all the same. An entry without a content address is fetched only with
    ``allow_unverified=True`` (or ``ZOO_ALLOW_UNVERIFIED=1``) the first time; the sha256 it had is then pinned in
    the lock file, and every later copy must match it.
    """
    dest = cached_path(entry)
    label = _label(entry)
    verified = is_verified(entry)
    pinned = None if verified else read_lock().get(label)
    if allow_unverified is None:
        allow_unverified = _env_allows_unverified()

    if not verified and not pinned and not allow_unverified:
        raise WeightsError(
            f"weights {label} have no content address in the manifest; fetch them only if you trust the source, "
            "with allow_unverified=True, ZOO_ALLOW_UNVERIFIED=1 or `zoo weights fetch --allow-unverified` (the "
            "sha256 of that first download is pinned, and later downloads must match it)"
        )
    if dest.exists() and source is None:
        try:
            seen = check_file(entry, dest, where=str(dest))
            if not verified and not pinned:  # placed in the cache by hand: trusted now, pinned from now on
                _pin(entry, seen, str(dest))
            return dest
        except WeightsError as e:
            dest.unlink()
            _logger.warning("cached file failed its check and was deleted; fetching again (%s)", e)
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
        check_file(entry, tmp, sha256=seen, where=source)
        if not verified and not pinned:
            _pin(entry, seen, source)
            _logger.warning("%s has no content address in the manifest; pinned the sha256 of this download, %s, "
                            "in %s", label, seen, lock_path())
        elif not entry.get("sha256"):
            _logger.info("%s verified by git blob; its sha256 is %s", label, seen)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def copy_to_cache(entry: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Place a file the user downloaded elsewhere into the cache, after the same check as a download."""
    return fetch(entry, source=str(Path(path).resolve()), allow_unverified=True)


def clear_cached(entry: Mapping[str, Any]) -> bool:
    """Remove a cached file (its pinned hash, if any, stays); returns whether one was there."""
    dest = cached_path(entry)
    if dest.exists():
        dest.unlink()
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# The hook into timm's loader
# ---------------------------------------------------------------------------------------------------------------

def verified_pretrained_kwargs(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Called by our families' ``_create_*`` before ``build_model_with_cfg``: resolve the pretrained cfg timm is
    about to use and, when it is a manifest tag, fetch and check its file and pass it to timm as the cfg's ``file``.

    A cfg that already names a ``file`` or ``state_dict`` (``pretrained_cfg_overlay=dict(file=PATH)``) is the
    caller's choice and goes to timm untouched. A ``url`` overlay is taken as a mirror: fetched, and checked
    against the manifest entry all the same. The URL otherwise comes from the active manifest (``ZOO_MANIFEST``
    included), not from the cfg registered at import.
    """
    if not pretrained:
        return kwargs
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    if cfg.file or cfg.state_dict or cfg.hf_hub_id:
        return kwargs
    entry = next((e for e in entries_for(variant) if e.get("tag") == cfg.tag), None)
    if entry is None:
        if cfg.url:  # a cfg from elsewhere with its own URL: timm's loader, timm's rules
            return kwargs
        tags = ", ".join(e["tag"] for e in entries_for(variant))
        raise WeightsError(
            f"no pretrained weights are known for {variant}{'.' + cfg.tag if cfg.tag else ''}; "
            + (f"its tags with weights: {tags}" if tags else f"models with weights: {_known_models()}")
            + ". Pass pretrained_cfg_overlay=dict(file=PATH) (or checkpoint_path=...) to load a file you have."
        )
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    path = fetch(entry, source=overlay.get("url") or None)  # the manifest's URL unless the caller named a mirror
    overlay["file"] = str(path)
    return {**kwargs, "pretrained_cfg_overlay": overlay}


def timm_pretrained_args(name: str, pretrained: bool | str) -> dict[str, Any]:
    """``timm.create_model`` arguments that load ``pretrained`` (``False``, ``True`` for the default tag, or a tag).

    For LightZoo's models the tag is checked against the manifest first, so an unknown one is a
    :class:`WeightsError` listing the known tags; a tag that ``ZOO_MANIFEST`` adds after import (not registered
    with timm) is passed as a full cfg built from its entry.
    """
    if not pretrained:
        return {"pretrained": False}
    from ..registry import _ZOO_MODELS

    tag = None if pretrained is True else str(pretrained)
    if name not in _ZOO_MODELS:
        return {"pretrained": True, **({"pretrained_cfg": tag} if tag else {})}
    entry = find_entry(name, tag)
    import timm.models

    try:
        timm.models.get_pretrained_cfg(f"{name}.{entry['tag']}", allow_unregistered=False)
        return {"pretrained": True, "pretrained_cfg": entry["tag"]}
    except RuntimeError:
        base = timm.models.get_pretrained_cfg(name).to_dict()
        return {"pretrained": True,
                "pretrained_cfg": {**cfg_from_entry(base, entry), "architecture": name, "tag": entry["tag"]}}


# ---------------------------------------------------------------------------------------------------------------
# Loading into a model that already exists
# ---------------------------------------------------------------------------------------------------------------

def _classifier_prefixes(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def load_pretrained(model: nn.Module, name: str, tag: str | None = None, source: str | None = None,
                    allow_unverified: bool | None = None) -> nn.Module:
    """Fetch the manifest's weights for ``name``/``tag`` and load them into an already built ``model``.

    ``timm.create_model(..., pretrained=True)`` is the usual way; this is for a model you already hold. When the
    model was built with another number of classes than the weights, the backbone loads strictly and the
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


__all__ = ["cache_dir", "cached_path", "check_file", "clear_cached", "copy_to_cache", "fetch", "find_entry",
           "git_blob_sha1", "is_verified", "load_pretrained", "lock_path", "read_lock", "sha256_of",
           "timm_pretrained_args", "unpin", "verified_pretrained_kwargs"]
