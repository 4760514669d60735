"""The JSON sidecar written next to every exported file (``model.onnx`` -> ``model.onnx.json``).

It holds what an app needs to feed the model and read its answer (input names/shapes, mean/std, resize policy,
class names, output names, detection post-processing settings) and what a reviewer needs to trust it (opset,
exporter, parity figures, library versions, the source checkpoint and the file's sha256).
``<file>.json`` rather than ``<stem>.json`` so ``model.onnx``, ``model.int8.onnx`` and ``model.ort`` in one
folder never overwrite each other's sidecar.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from zoo.checkpoint import atomic_write_bytes, sidecar_path

from .spec import ExportSpec

SIDECAR_VERSION = 1


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def preprocessing(model_or_config: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar's ``preprocessing`` block: the model's data config (the one preprocessing that training's
    evaluation, ``zoo eval``, ``zoo predict`` and int8 calibration use) and its recipe step by step."""
    from zoo.data.transforms import describe_eval_transform, resolve_data_config

    dc = resolve_data_config(model_or_config) if isinstance(model_or_config, nn.Module) else dict(model_or_config)
    return {
        "mean": list(dc["mean"]), "std": list(dc["std"]),
        "crop_pct": dc["crop_pct"], "crop_mode": dc["crop_mode"], "interpolation": dc["interpolation"],
        "color": dc["color"], "default_input_size": list(dc["input_size"]),
        "resize_in_model": dc["resize_in_model"], "normalize_in_model": dc["normalize_in_model"],
        "input_range": "[0, 1] (normalised inside)" if dc["normalize_in_model"] else "(x / 255 - mean) / std",
        "recipe": describe_eval_transform(dc),
    }


def io_description(spec: ExportSpec, output_shapes: Mapping[str, list[Any]] | None = None) -> dict[str, Any]:
    batch: Any = "batch" if spec.dynamic_batch else 1
    return {
        "inputs": [{"name": n, "shape": [batch, *spec.input_size], "dtype": "float32"} for n in spec.input_names],
        "outputs": [{"name": n, "shape": (output_shapes or {}).get(n), "dtype": "float32"}
                    for n in spec.output_names],
        "primary_output": spec.primary_output,
        "class_axis": spec.class_axis,
    }


def write_sidecar(path: str | os.PathLike, fields: Mapping[str, Any]) -> Path:
    """Write ``<path>.json`` atomically with ``fields`` plus the file's format, size and sha256."""
    import onnx
    import onnxruntime
    import torch

    import zoo

    path = Path(path)
    data = {
        "sidecar_version": SIDECAR_VERSION,
        "file": path.name,
        "format": path.suffix.lstrip("."),
        "size_bytes": path.stat().st_size,
        "sha256": sha256(path),
        **dict(fields),
        "versions": {"lightzoo": zoo.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    text = json.dumps(data, indent=2, default=_jsonable)
    side = sidecar_path(path)
    atomic_write_bytes(side, lambda tmp: Path(tmp).write_text(text + "\n"))
    return side


def _jsonable(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()  # numpy / torch scalars
    return str(o)
