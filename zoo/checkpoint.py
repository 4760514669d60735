"""Reading and writing checkpoints without executing code from files.

Two formats come in: our own (``.safetensors`` weights + a ``.json`` sidecar with the model's metadata) and the
official releases (``.pth`` pickles, often wrapped under ``model`` / ``net`` / ``state_dict`` / ``network_weights``,
sometimes with a ``module.`` prefix from DataParallel). Pickles are opened with ``weights_only=True`` so a file
cannot run code on load. Each family's ``checkpoint_filter_fn`` maps official key names onto ours.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError

CHECKPOINT_FORMAT_VERSION = 1
WRAPPER_KEYS = ("state_dict", "model", "net", "net_E", "network_weights", "model_ema", "module")

StateDict = dict[str, torch.Tensor]


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON metadata file that travels next to a model file, for checkpoints and exported files alike:
    ``model.safetensors`` -> ``model.json``; any other file gets ``<file>.json`` (``model.onnx`` ->
    ``model.onnx.json``), so ``model.onnx``, ``model.int8.onnx`` and ``model.ort`` in one folder never share one."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix == ".safetensors" else Path(f"{path}.json")


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder and ``os.replace`` it, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Save weights as safetensors plus a JSON sidecar (model name, task, classes, input size, normalisation, ...).

    Both files are written atomically; the sidecar records ``format_version`` so future readers can refuse
    files they do not understand instead of mis-loading them.
    """
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    # safetensors refuses shared storage and non-contiguous views; store plain copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"our checkpoints are .safetensors files; got {str(path)!r}")
    atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp))
    meta = {"format_version": CHECKPOINT_FORMAT_VERSION, **(dict(metadata) if metadata else {})}
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    atomic_write_bytes(sidecar_path(path), lambda tmp: Path(tmp).write_text(text))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar metadata of one of our checkpoints, or ``None`` for a bare/official file."""
    side = sidecar_path(path)
    if Path(path).suffix != ".safetensors" or not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {str(side)!r} is not valid JSON: {e}") from e
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format_version {version!r}, newer than this LightZoo understands "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade LightZoo to load it"
        )
    return meta


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """Find the tensor dict inside the wrappers official training scripts save, and drop ``module.`` prefixes."""
    for _ in range(3):  # wrappers nest at most a couple of levels in the releases we know
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state_dict found (looked under {', '.join(WRAPPER_KEYS)})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: contains no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Load the tensors of a checkpoint file of either format, safely (no pickle code execution)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle_errors() as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"checkpoint {str(path)!r} contains Python objects that would execute code on load; refused "
                f"(weights_only=True). Re-save it as a plain state_dict or safetensors. Detail: {msg}"
            ) from e
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint ({msg})") from e
    return unwrap_state_dict(obj, source=f"checkpoint {str(path)!r}")


def pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle
    import zipfile

    return (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, TypeError, KeyError, IndexError, UnicodeDecodeError)


def family_filter_fn(model: nn.Module) -> Callable[[StateDict, nn.Module], StateDict] | None:
    """The ``checkpoint_filter_fn`` of the module that defines ``model``'s class, if it has one."""
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the first offending keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(parts)
            + ". Is it a checkpoint for another model or another num_classes?"
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load an official or LightZoo checkpoint into ``model`` (strictly by default) and return the model.

    Official files go through the family's ``checkpoint_filter_fn``; our safetensors files load as they are.
    """
    source = f"checkpoint {str(path)!r}"
    state = read_state_dict(path)
    meta = read_metadata(path)
    if meta is not None and meta.get("peft"):  # LoRA / adapter weights on top of referenced base weights
        from .peft import load_adapter_checkpoint

        return load_adapter_checkpoint(model, path, meta, state)
    ours = meta is not None or Path(path).suffix == ".safetensors"
    if not ours:
        filter_fn = family_filter_fn(model)
        if filter_fn is not None:
            state = filter_fn(state, model)
    if strict:
        load_state_dict_strict(model, state, source)
    else:
        model.load_state_dict(state, strict=False)
    return model
