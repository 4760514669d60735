"""``zoo eval`` on an exported file (``.onnx``, ``.int8.onnx``, ``.ort``, ``.pte``, ``.tflite``) in its own runtime.

Why: an export's parity check says the file computes what PyTorch computes on a few inputs; a person shipping it
needs the task metric on real images, measured the way the checkpoint's was so the two can be compared. So the
file runs behind :class:`ExportedModel`, a small ``nn.Module`` that returns what the PyTorch model returns in eval
mode (the task class's ``run_exported``: logits; detections after the head's post-processing), and the dataset,
preprocessing and metric accumulators are the ones training uses (:mod:`zoo.tasks`, :mod:`zoo.data.build`),
configured from the file's JSON sidecar (the training config of the checkpoint it came from, its input size,
mean and std).

This module and :mod:`export.benchmark` are the only places in ``export`` that read datasets; they import them
inside functions, so ``zoo export`` alone never loads the data pipeline.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.errors import ConfigError, ExportError
from zoo.heads import get_task

from .metadata import sidecar_path
from .parity import make_session

logger = logging.getLogger(__name__)

#: file suffix -> the runtime that executes it
RUNTIMES = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".pte": "executorch", ".tflite": "litert"}
EXPORTED_SUFFIXES = tuple(RUNTIMES)

Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The ``<file>.json`` that ``zoo export`` wrote next to ``path``."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported file {str(path)!r} does not exist")
    side = sidecar_path(path)
    if not side.is_file():
        raise ExportError(f"{path.name} has no sidecar {side.name}: evaluate files written by `zoo export`, whose "
                          "sidecar says how to preprocess the input and read the output")
    return json.loads(side.read_text())


def runtime_name(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIMES:
        raise ExportError(f"{Path(path).name}: not an exported model file ({', '.join(EXPORTED_SUFFIXES)})")
    return RUNTIMES[suffix]


def load_runner(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """A function running the file on one sample (one array per graph input, batch axis included), in its runtime:
    onnxruntime for ``.onnx`` / ``.ort``, ExecuTorch for ``.pte``, the LiteRT interpreter for ``.tflite``."""
    runtime = runtime_name(path)
    if runtime == "executorch":
        from .executorch import load_pte

        return load_pte(path, threads)
    if runtime == "litert":
        from .tflite import load_tflite

        return load_tflite(path, threads or 1)
    # parked between runs: an interleaved timing loop must not find this session's threads still spinning
    session = make_session(path, threads=threads, stop_spinning_after_run=True)
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(names, inputs)})

    return run


class ExportedModel(nn.Module):
    """An exported file behind the PyTorch model's eval-mode interface, so the trainer's task adapters can score it.

    Classification / segmentation / change detection: normalised ``(N, C, H, W)`` tensors in, the primary output
    (logits) out. Detection: a list of ``[0, 1]`` images of any size in, torchvision-style detections out; each image
    is resized to the graph's input size and the boxes are scaled back to the image, as an app would do.
    The graph runs one sample at a time (exported graphs have a fixed batch of 1 unless exported with a dynamic one).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.sidecar = read_sidecar(path)
        self.run_one = load_runner(path, threads)
        self.task = str(self.sidecar["task"])
        self.task_class = get_task(self.task)
        self.input_size = tuple(int(s) for s in self.sidecar["input_size"])
        self.eval()

    def forward(self, *inputs: Any) -> Any:
        return self.task_class.run_exported(self.run_one, inputs, self.sidecar)


def evaluation_config(sidecar: Mapping[str, Any], overrides: Sequence[str] = (), split: str | None = None,
                      batch_size: int | None = None) -> Any:
    """The trainer's config for scoring a file: its checkpoint's training config (dataset, splits), at the file's
    input size and normalisation, changed by ``overrides`` (``data.root=...``, ``data.dataset=...``)."""
    from zoo.config import load_config

    base = json.loads(json.dumps(sidecar.get("training_config") or {}))
    names_data = bool(base) or any(o.startswith(("data.dataset=", "data.root=")) for o in overrides)
    if not names_data:
        raise ConfigError(f"the sidecar of {sidecar.get('file')} names no dataset (it was exported from a model "
                          "name, not from a trained checkpoint): pass --data DATASET_OR_FOLDER")
    base["task"] = sidecar["task"]
    base.setdefault("model", {})["name"] = sidecar.get("model") or base.get("model", {}).get("name")
    size = [int(s) for s in sidecar["input_size"]]
    if len(size) == 3 and size[1] == size[2]:
        base.setdefault("data", {})["img_size"] = size[1]
    cfg = load_config(base, overrides)
    cfg.model.in_chans = size[0]
    pre = sidecar.get("preprocessing") or {}
    normalises_itself = get_task(sidecar["task"]).data_rules.get("normalize_in_model", False)
    if cfg.data.mean is None and not normalises_itself and pre.get("mean") is not None:
        cfg.data.mean, cfg.data.std = list(pre["mean"]), list(pre["std"])
    if split is not None:
        cfg.data.val_split = split
    if batch_size is not None:
        cfg.data.val_batch_size = batch_size
    return cfg


def build_eval_data(cfg: Any) -> Any:
    """The task adapter and data bundle for ``cfg``, the same ones training builds."""
    from zoo.tasks import get_task

    task = get_task(cfg.task)
    data = task.build_data(cfg)
    task.setup(cfg, data, torch.device("cpu"))
    return task, data


@torch.inference_mode()
def evaluate_module(model: nn.Module, cfg: Any, task: Any, data: Any, limit: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The task's metrics of ``model`` (PyTorch or :class:`ExportedModel`) over the validation split, with the
    trainer's accumulator; ``limit`` scores only the first ``limit`` images (quick looks, tests)."""
    from torch.utils.data import Subset

    from zoo.data.build import make_loader

    val = data.val if limit is None else Subset(data.val, range(min(limit, len(data.val))))
    loader, _ = make_loader(val, cfg.data.val_batch_size or 2 * cfg.data.batch_size, train=False, seed=0, rank=0,
                            world_size=1, workers=0, collate_fn=data.collate_fn)
    model.eval()
    acc = task.accumulator(data)
    done = 0
    for batch in loader:
        batch = task.to_device(batch, torch.device("cpu"), False)
        acc.update(task.predict(model, batch), batch)
        done += task.batch_size(batch)
        if progress:
            progress(done, len(val))
    return {**acc.compute(), "num_images": len(val)}


def evaluate_exported(path: str | os.PathLike, overrides: Sequence[str] = (), *, split: str | None = None,
                      batch_size: int | None = None, threads: int | None = None, limit: int | None = None,
                      ) -> dict[str, Any]:
    """The task's metrics of an exported file on its checkpoint's validation split (or the data in ``overrides``).

    Returns the metrics, ``num_images``, and the file's ``runtime``.
    """
    model = ExportedModel(path, threads=threads)
    cfg = evaluation_config(model.sidecar, overrides, split, batch_size)
    task, data = build_eval_data(cfg)
    expected = model.sidecar.get("num_classes")
    if expected is not None and data.num_classes != expected:
        raise ConfigError(f"the dataset has {data.num_classes} classes but {model.path.name} predicts {expected}")
    return {**evaluate_module(model, cfg, task, data, limit), "runtime": runtime_name(path)}


def training_calibration(meta: Mapping[str, Any], input_size: Sequence[int], n_inputs: int = 1, limit: int = 64,
                         seed: int = 0) -> tuple[tuple[np.ndarray, ...], str] | None:
    """int8 calibration drawn from the checkpoint's own training split: ``limit`` images chosen by ``seed``, with
    the evaluation preprocessing (no augmentation), as the exported graph will see them in an app.

    ``None`` when the checkpoint names no dataset or its data cannot be read here (the caller then calibrates on
    synthetic images and says so).
    """
    config = meta.get("config") or meta.get("training_config")
    if not config:
        return None
    sidecar = {"task": meta.get("task") or config.get("task", "classification"), "model": meta.get("model"),
               "input_size": list(input_size), "training_config": config,
               "preprocessing": {"mean": meta.get("mean"), "std": meta.get("std")}, "file": meta.get("model")}
    try:
        cfg = evaluation_config(sidecar, ["data.augment=false"])
        from zoo.tasks import get_task

        data = get_task(cfg.task).build_data(cfg)
    except Exception as e:  # noqa: BLE001 - any failure to read the data means: fall back to synthetic
        logger.info("cannot read the checkpoint's dataset for int8 calibration (%s: %s)", type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")
        return None
    train = data.train
    n = min(limit, len(train))
    picks = np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False))
    c, h, w = (int(s) for s in input_size[-3:])
    arrays: list[list[np.ndarray]] = [[] for _ in range(n_inputs)]
    for i in picks:
        for k, x in enumerate(_sample_images(train[int(i)], n_inputs)):
            x = x.float()
            if tuple(x.shape[-2:]) != (h, w):  # detection images keep their size in the dataset
                x = nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            arrays[k].append(x.numpy())
    batch = tuple(np.ascontiguousarray(np.stack(a), dtype=np.float32) for a in arrays)
    dataset = cfg.data.dataset if cfg.data.dataset != "folder" else f"folder {cfg.data.root}"
    return batch, f"{n} images of the {dataset} {cfg.data.train_split} split (seed {seed})"


def _sample_images(sample: Any, n_inputs: int) -> list[torch.Tensor]:
    """The image tensor(s) of one dataset sample: ``(x, y)`` tuples or the dense datasets' dicts."""
    if isinstance(sample, (tuple, list)):
        return [sample[0]]
    if n_inputs == 2:
        return [sample["image_a"], sample["image_b"]]
    return [sample["image"]]
