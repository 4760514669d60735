"""The training engine: one loop for all four tasks, built from timm's parts.

Public entry point: :func:`fit`. Everything task-specific sits in a small adapter (``zoo.tasks``); everything
here is shared: timm's optimizer and scheduler factories, ``timm.data.Mixup`` and ``timm.loss`` (through the
classification adapter), ``timm.utils.ModelEmaV3``, AMP, gradient accumulation and clipping, channels_last,
backbone freezing, DDP under ``torchrun``, per-epoch validation, best/last checkpoints (safetensors + JSON
sidecar), metrics as JSONL/CSV, a PNG of the curves, and an atomically written training state from which
``resume`` continues bit-identically on CPU. ``train.peft`` (``zoo.peft``: LoRA / adapters on a frozen base,
adapter checkpoints) and ``train.distill`` (``train.distill``: a frozen teacher's logits) plug into the same loop.

Why the resume is exact: the state file holds model, optimizer, scheduler, grad scaler, EMA, every rank's RNG
states, the epoch and the number of batches already consumed; the data order and each sample's augmentation are
functions of ``(seed, epoch, position)`` only (``zoo.data.build``), and no DataLoader draws from the global generator.
A run stopped after any optimizer step and resumed therefore replays exactly the computation it skipped.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import zoo
from zoo.checkpoint import atomic_write_bytes, pickle_errors
from zoo.config import Config, load_config
from zoo.data.build import DataBundle, make_loader
from zoo.errors import CheckpointError, ConfigError, ZooError
from zoo.tasks import Task, get_task

STATE_FORMAT = "lightzoo-train-state"
STATE_VERSION = 1
STATE_FILE = "train_state.pt"

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- environment
def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, 0) when not under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use train.device=cpu (or auto)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "auto":
        return torch.float16
    if amp == "fp16" and device.type == "cpu":
        raise ConfigError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 (or off)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random``: model initialisation and augmentation become repeatable."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def git_revision() -> str | None:
    """The commit of the LightZoo source tree that trained a checkpoint (``None`` outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if not rev or out.returncode:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return rev + ("-dirty" if dirty else "")


# --------------------------------------------------------------------------------------------------- freezing
def _backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The backbone module of a task model (``model.backbone``/``encoder``) or the classifier itself."""
    for attr in ("backbone", "encoder"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            return sub, attr + "."
    return model, ""


def _feature_module_names(backbone: nn.Module) -> list[str]:
    fi = getattr(backbone, "feature_info", None)
    if fi is None:
        return []
    if hasattr(fi, "module_name"):
        return list(fi.module_name())
    return [f["module"] for f in fi if isinstance(f, Mapping) and "module" in f]


def freeze_backbone(model: nn.Module, stages: int) -> list[nn.Module]:
    """Stop training the start of the backbone; return the frozen normalisation layers (kept in eval mode).

    ``stages=-1`` freezes the whole backbone (everything except the classifier for a classification model).
    ``stages=N`` freezes every parameter registered up to the end of the ``N``-th entry of the backbone's
    ``feature_info`` (the stem plus the first stages for timm-style models), following parameter registration
    order, which in timm-style models is the order of the network.
    """
    if stages == 0:
        return []
    backbone, prefix = _backbone_of(model)
    named = list(backbone.named_parameters())
    if stages < 0:
        keep: set[int] = set()
        if not prefix and hasattr(backbone, "get_classifier"):
            keep = {id(p) for p in backbone.get_classifier().parameters()}
        frozen = [p for _, p in named if id(p) not in keep]
    else:
        names = _feature_module_names(backbone)
        if stages > len(names):
            raise ConfigError(f"model.freeze={stages} but the backbone has only {len(names)} feature stages "
                              f"({', '.join(names) or 'none found'}); use 1..{len(names)} or -1 for all")
        target = names[stages - 1]
        prefixes = (target + ".", target.replace(".", "_") + ".")
        last = max((i for i, (n, _) in enumerate(named) if n.startswith(prefixes)), default=-1)
        if last < 0:
            raise ConfigError(f"model.freeze={stages}: no parameters found under {target!r}")
        frozen = [p for _, p in named[: last + 1]]
    for p in frozen:
        p.requires_grad_(False)
    frozen_ids = {id(p) for p in frozen}
    norms = []
    for m in backbone.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            params = list(m.parameters(recurse=False))
            if params and all(id(p) in frozen_ids for p in params):
                norms.append(m)
    return norms


# ---------------------------------------------------------------------------------------------- train state
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training-state file safely (``weights_only=True``); anything else gives a clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {str(path)!r} does not exist (nothing to resume)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle_errors() as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"training state {str(path)!r} contains Python objects that would execute code "
                                  f"on load; refused (weights_only=True). Detail: {msg}") from e
        raise CheckpointError(f"training state {str(path)!r} is truncated or not a LightZoo training state "
                              f"({msg}); resume from an intact file or start afresh") from e
    if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a LightZoo training state (a model checkpoint? fine-tune "
                              f"from weights with model.checkpoint=PATH instead of --resume)")
    if obj.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"training state {str(path)!r} has version {obj.get('version')}, newer than this "
                              f"LightZoo understands ({STATE_VERSION})")
    missing = [k for k in ("config", "model", "optimizer", "epoch", "batch", "step", "rng") if k not in obj]
    if missing:
        raise CheckpointError(f"training state {str(path)!r} lacks {', '.join(missing)}")
    return obj


def resolve_state_path(resume: str | os.PathLike | bool, cfg: Config | None) -> Path:
    """``True``/``"auto"`` -> the run folder's state; a folder -> its state; a file -> itself."""
    if resume is True or resume == "auto":
        if cfg is None:
            raise ConfigError("--resume without a path needs the run's config (or give the state file's path)")
        return cfg.run_dir / STATE_FILE
    p = Path(str(resume))
    return p / STATE_FILE if p.is_dir() else p


# --------------------------------------------------------------------------------------------------- trainer
class _Trainer:
    def __init__(self, cfg: Config, state: dict[str, Any] | None, data: DataBundle | None, quiet: bool) -> None:
        self.cfg = cfg
        self.resume_state = state
        self.quiet = quiet
        self.rank, self.world, self.local_rank = _dist_env()
        self.is_main = self.rank == 0
        self._own_pg = False
        self._signal: int | None = None
        self._saved_step: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._data = data

    # ----------------------------------------------------------------------------------------------- logging
    def log(self, msg: str) -> None:
        """Progress for people (``zoo train`` shows these lines on stdout); silent with ``quiet``."""
        if self.is_main and not self.quiet:
            logger.info(msg)

    # ------------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = _resolve_device(cfg.train.device, self.local_rank)
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
            self._own_pg = True
        self.amp_dtype = _amp_dtype(cfg.train.amp, self.device)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.train.seed)
        if cfg.model.checkpoint and Path(cfg.model.checkpoint).resolve().parent == cfg.run_dir.resolve():
            raise ConfigError(f"model.checkpoint {cfg.model.checkpoint} is in this run's folder {cfg.run_dir}, whose "
                              "checkpoints the run would overwrite; set out_dir=... to a new folder")
        self.task: Task = get_task(cfg.task)
        self.data = self._data or self.task.build_data(cfg)
        self.model = self.task.build_model(cfg, self.data)
        if cfg.train.qat:  # fine-tune through int8 fake quantization (zoo/quantization.py)
            from zoo.quantization import prepare_qat_model

            prediction_loss = getattr(self.model, "prediction_loss", lambda: None)
            if not self.task.loss_outside_model and prediction_loss() is None:
                raise ConfigError(f"train.qat=true trains an exported inference graph, and a {cfg.task} model "
                                  "computes its training loss inside the model (from its targets); QAT supports "
                                  "tasks whose loss is computed from the outputs (classification, segmentation, "
                                  "change detection)")

            self.model = prepare_qat_model(self.model, cfg.task, self.data.in_chans, cfg.data.img_size)
        self.peft_spec = self._apply_peft()
        self.frozen_norms = freeze_backbone(self.model, cfg.model.freeze)
        if self.peft_spec is not None:
            from zoo.peft import frozen_norm_layers

            self.frozen_norms += [m for m in frozen_norm_layers(self.model) if m not in self.frozen_norms]
        from zoo.peft import parameter_counts

        self.params = parameter_counts(self.model)
        self.model.to(self.device)
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.train.sync_bn and self.world > 1 and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.task.setup(cfg, self.data, self.device)
        self.distiller = None
        if cfg.train.distill.teacher:
            from .distill import Distiller, build_teacher

            teacher = build_teacher(cfg.train.distill.teacher, self.data.num_classes, self.device)
            self.distiller = Distiller(cfg.train.distill, teacher)

        bs = cfg.data.batch_size
        self.train_loader, self.train_sampler = make_loader(
            self.data.train, bs, train=True, seed=cfg.train.seed, rank=self.rank, world_size=self.world,
            workers=cfg.data.workers, collate_fn=self.data.collate_fn, pin_memory=self.device.type == "cuda")
        self.val_loader, _ = make_loader(
            self.data.val, cfg.data.val_batch_size or 2 * bs, train=False, seed=cfg.train.seed, rank=self.rank,
            world_size=self.world, workers=cfg.data.workers, collate_fn=self.data.collate_fn,
            pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = self.train_sampler.num_samples // bs
        if self.batches_per_epoch == 0:
            raise ConfigError(f"data.batch_size={bs} is larger than the training split per process "
                              f"({self.train_sampler.num_samples} images): lower it")
        accum = cfg.train.accum_steps
        self.updates_per_epoch = math.ceil(self.batches_per_epoch / accum)

        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        o = cfg.optim
        opt_kwargs: dict[str, Any] = dict(opt=o.opt, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
        if o.layer_decay is not None:
            opt_kwargs["layer_decay"] = o.layer_decay
        try:
            self.optimizer = create_optimizer_v2(self.model, **opt_kwargs)
        except (ValueError, AssertionError, TypeError) as e:
            raise ConfigError(f"optim.opt={o.opt!r}: {e}") from e
        s = cfg.sched
        self.scheduler = None
        self.num_epochs = cfg.train.epochs
        if s.sched != "none":
            try:
                self.scheduler, self.num_epochs = create_scheduler_v2(
                    self.optimizer, sched=s.sched, num_epochs=cfg.train.epochs, warmup_epochs=s.warmup_epochs,
                    warmup_lr=s.warmup_lr, min_lr=s.min_lr, cooldown_epochs=s.cooldown_epochs,
                    decay_epochs=s.decay_epochs if s.decay_epochs is not None else max(cfg.train.epochs // 3, 1),
                    decay_rate=s.decay_rate, step_on_epochs=False, updates_per_epoch=self.updates_per_epoch)
            except (ValueError, AssertionError) as e:
                raise ConfigError(f"sched.sched={s.sched!r}: {e}") from e
            if self.scheduler is None:
                raise ConfigError(f"unknown sched.sched {s.sched!r}; use cosine, step, multistep, poly, tanh, "
                                  f"plateau, wsd or none")
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None)
        self.ema = None
        if cfg.train.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.train.ema_decay)
        self.model_without_ddp = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)

        self.run_dir = cfg.run_dir
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.epoch_loss_sum, self.epoch_images, self.epoch_time = 0.0, 0, 0.0
        self.skipped = 0  # updates dropped for a NaN/Inf loss in this epoch (train.nonfinite=skip)
        if self.resume_state is not None:
            self._restore(self.resume_state)
        else:
            # one random stream per rank for dropout / drop-path / mixup (identical init came from the shared seed)
            seed_everything(cfg.train.seed + self.rank)

    def _apply_peft(self) -> dict[str, Any] | None:
        """LoRA / adapters on the freshly built (and base-loaded) model, and the base weights' reference."""
        p = self.cfg.train.peft
        self.peft_base: dict[str, Any] | None = None
        if p.method == "none":
            return None
        from zoo.peft import apply_peft, file_sha256

        m = self.cfg.model
        if m.checkpoint:
            self.peft_base = {"checkpoint": m.checkpoint, "checkpoint_abs": str(Path(m.checkpoint).resolve()),
                              "sha256": file_sha256(m.checkpoint)}
        elif m.pretrained:
            self.peft_base = {"pretrained": m.pretrained}
        return apply_peft(self.model, p.method, rank=p.rank, alpha=p.alpha, dropout=p.dropout, target=p.target,
                          train_norms=p.train_norms, train_head=p.train_head)

    def _restore(self, st: dict[str, Any]) -> None:
        saved = st["config"]
        if saved.get("model", {}).get("name") != self.cfg.model.name or saved.get("task") != self.cfg.task:
            raise CheckpointError(
                f"training state is for {saved.get('task')} / {saved.get('model', {}).get('name')}, not "
                f"{self.cfg.task} / {self.cfg.model.name}: resume with the config it was written with")
        if st.get("world_size", 1) != self.world and st["batch"]:
            raise CheckpointError(
                f"training state was written mid-epoch by {st.get('world_size', 1)} processes; resume it with the "
                f"same number (now {self.world}) or from an end-of-epoch state")
        try:
            zoo.checkpoint.load_state_dict_strict(self.model_without_ddp, st["model"], "training state")
            self.optimizer.load_state_dict(st["optimizer"])
            if self.scheduler is not None and st.get("scheduler") is not None:
                self.scheduler.load_state_dict(st["scheduler"])
            if self.scaler is not None and st.get("scaler") is not None:
                self.scaler.load_state_dict(st["scaler"])
            if self.ema is not None:
                if st.get("ema") is None:
                    raise CheckpointError("training state has no EMA weights but train.ema is on")
                self.ema.load_state_dict(st["ema"])
        except (ValueError, KeyError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"training state does not fit this run: {e}") from e
        self.epoch, self.batch, self.step = int(st["epoch"]), int(st["batch"]), int(st["step"])
        if self.batch >= self.batches_per_epoch and self.batch:
            self.batch = self.batches_per_epoch
        self.history = list(st.get("history", []))
        self.best = dict(st.get("best", {}))
        self.epoch_loss_sum = float(st.get("epoch_loss_sum", 0.0))
        self.epoch_images = int(st.get("epoch_images", 0))
        self.epoch_time = float(st.get("epoch_time", 0.0))
        self.skipped = int(st.get("skipped", 0))
        self._saved_step = self.step
        rngs = st["rng"]
        _set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.log(f"resumed at epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")

    # ------------------------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        rng = _rng_state()
        rngs = [rng]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, rng)
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "config": self.cfg.to_dict(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "world_size": self.world,
            "model": self.model_without_ddp.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rngs, "history": self.history, "best": self.best,
            "epoch_loss_sum": self.epoch_loss_sum, "epoch_images": self.epoch_images, "epoch_time": self.epoch_time,
            "skipped": self.skipped,
        }

    def save_state(self) -> Path:
        state = self._state()  # collective under DDP: every rank takes part
        path = self.run_dir / STATE_FILE
        if self.is_main:
            # temp file + os.replace: a second Ctrl-C or a kill mid-write leaves the previous state in place
            atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))
            self._saved_step = self.step
        return path

    # ----------------------------------------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # a second Ctrl-C means "now"
            if self.is_main:
                saved = (f"the last saved state ({self.run_dir / STATE_FILE}, step {self._saved_step}) is intact"
                         if self._saved_step is not None else "no training state was saved yet")
                logger.warning("second %s: stopping at once without a new state; %s",
                               signal.Signals(signum).name, saved)
            raise KeyboardInterrupt
        self._signal = signum
        if self.is_main:  # even with --quiet: the user must know the process heard them and is not hung
            logger.warning("%s: finishing this step, then writing a resumable state (send it again to stop at once)",
                           signal.Signals(signum).name)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[s] = signal.signal(s, self._on_signal)

    def _restore_signals(self) -> None:
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers.clear()

    def _should_stop(self) -> bool:
        stop = self._signal is not None
        if self.world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    # ---------------------------------------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _set_train(self) -> None:
        self.model.train()
        for m in self.frozen_norms:
            m.eval()

    def _optimizer_step(self) -> None:
        o = self.cfg.optim
        if self.scaler is not None:
            if o.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._clip()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model_without_ddp, step=self.step)
        self.step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.step)

    def _clip(self) -> None:
        o = self.cfg.optim
        if o.clip_grad is None:
            return
        from timm.utils import dispatch_clip_grad

        params = [p for p in self.model.parameters() if p.requires_grad]
        dispatch_clip_grad(params, value=o.clip_grad, mode=o.clip_mode)

    def train_epoch(self) -> bool:
        """Train from ``self.batch`` to the end of ``self.epoch``; ``False`` if stopped (signal / stop_at_step)."""
        cfg = self.cfg
        t = cfg.train
        accum = t.accum_steps
        n = self.batches_per_epoch
        self.train_sampler.set_epoch(self.epoch, start=self.batch * cfg.data.batch_size)
        self._set_train()
        pbar = None
        if self.is_main and t.progress and not self.quiet:
            from tqdm import tqdm

            pbar = tqdm(total=n, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.num_epochs}",
                        dynamic_ncols=True, leave=False)
        loss_acc = torch.zeros((), device=self.device)
        group_loss = torch.zeros((), device=self.device)  # the micro-batches of the update being accumulated
        bad = torch.zeros((), dtype=torch.bool, device=self.device)  # any of them had a NaN/Inf loss
        images = group_images = 0
        t0 = time.perf_counter()
        tlog, ilog = t0, 0
        it = iter(self.train_loader)
        try:
            for i in range(self.batch, n):
                batch = self.task.to_device(next(it), self.device, t.channels_last)
                bs = self.task.batch_size(batch)
                group = min(accum, n - (i // accum) * accum)
                boundary = (i + 1) % accum == 0 or i + 1 == n
                sync = boundary or self.world == 1
                ctx = self.model.no_sync() if not sync else contextlib.nullcontext()  # type: ignore[operator]
                with ctx:
                    with self._autocast():
                        if self.distiller is None:
                            loss = self.task.loss(self.model, batch)
                        else:
                            with self.distiller.capture(self.model_without_ddp) as seen:
                                loss = self.task.loss(self.model, batch)
                            loss = self.distiller.combine(loss, seen)
                    scaled = loss / group
                    if self.scaler is not None:
                        self.scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                lossf = loss.detach().float()
                bad |= ~torch.isfinite(lossf)
                group_loss += lossf * bs
                group_images += bs
                self.batch = i + 1
                if not boundary:
                    continue
                if self._nonfinite(bad, group_loss):  # the update is dropped (train.nonfinite=skip)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped += 1
                else:
                    loss_acc += group_loss
                    images += group_images
                    self._optimizer_step()
                group_loss.zero_()
                bad.zero_()
                group_images = 0
                if pbar is not None:
                    pbar.update(self.batch - pbar.n)
                    if self.step % t.log_every == 0 or self.batch == n:
                        now = time.perf_counter()
                        lv = loss.item()
                        pbar.set_postfix(loss=f"{lv:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                         img_s=f"{(images - ilog) * self.world / max(now - tlog, 1e-9):.0f}")
                        tlog, ilog = now, images
                elif self.is_main and not self.quiet and self.step % t.log_every == 0:
                    # no progress bar (logs, pipes): one plain line per log_every steps
                    self.log(f"step {self.step}  epoch {self.epoch + 1}/{self.num_epochs}  batch {self.batch}/{n}  "
                             f"loss {loss.item():.4f}  lr {self.optimizer.param_groups[0]['lr']:.2e}")
                stop = (t.stop_at_step is not None and self.step >= t.stop_at_step) or self._should_stop()
                if stop or (t.save_every and self.step % t.save_every == 0 and self.batch < n):
                    self._fold(loss_acc, images, time.perf_counter() - t0)
                    loss_acc.zero_()
                    images, t0 = 0, time.perf_counter()
                    self.save_state()
                    if stop:
                        return False
        finally:
            if pbar is not None:
                pbar.close()
        self._fold(loss_acc, images, time.perf_counter() - t0)
        return True

    def _nonfinite(self, bad: torch.Tensor, group_loss: torch.Tensor) -> bool:
        """Whether the update about to be applied came from a NaN/Inf loss (on any rank): then skip or stop.

        Checked before the optimizer step, so the weights (and the last saved state) never see a NaN update.
        One flag per update, so the device synchronises once per step, not per micro-batch.
        """
        if self.world > 1:
            flag = bad.float().reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            hit = bool(flag.item())
        else:
            hit = bool(bad)
        if not hit:
            return False
        value = float(group_loss)
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch}/{self.batches_per_epoch})"
        if self.cfg.train.nonfinite == "skip":
            self.log(f"non-finite loss ({value}) at {where}: update skipped (train.nonfinite=skip)")
            return True
        amp = (f"an fp16 overflow under train.amp={self.cfg.train.amp} (use bf16 or off); " if self.amp_dtype
               == torch.float16 else "")
        saved = (f"the last saved state ({self.run_dir / STATE_FILE}, step {self._saved_step}) is intact; "
                 if self._saved_step is not None else "")
        raise ZooError(
            f"the training loss became {value} at {where}, before the update was applied. Likely causes: "
            f"a learning rate too high (optim.lr={self.cfg.optim.lr:g}: lower it, or set optim.clip_grad), {amp}"
            f"or NaN/Inf in the data. {saved}train.nonfinite=skip drops such updates instead of stopping")

    def _fold(self, loss_acc: torch.Tensor, images: int, seconds: float) -> None:
        self.epoch_loss_sum += float(loss_acc)
        self.epoch_images += images
        self.epoch_time += seconds

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The task's metrics over the whole validation split (merged across ranks)."""
        was_training = model.training
        model.eval()
        acc = self.task.accumulator(self.data)
        for batch in self.val_loader:
            batch = self.task.to_device(batch, self.device, self.cfg.train.channels_last)
            with self._autocast():
                out = self.task.predict(model, batch)
            acc.update(out, batch)
        if self.world > 1:
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, acc)
            acc = parts[0]
            for p in parts[1:]:
                acc.merge(p)
        model.train(was_training)
        return acc.compute()

    def end_epoch(self) -> None:
        cfg = self.cfg
        if self.scheduler is not None:
            self.scheduler.step(self.epoch + 1)
        if self.world > 1:
            # BN running statistics are per-rank buffers (DDP only syncs gradients); average them so every rank
            # validates, saves and continues with the same weights (timm's ``--dist-bn reduce``). Averaging the
            # EMA copies too is exact, since an EMA is linear in what it averages.
            from timm.utils import distribute_bn

            distribute_bn(self.model_without_ddp, self.world, reduce=True)
            if self.ema is not None:
                distribute_bn(self.ema.module, self.world, reduce=True)
        sums = torch.tensor([self.epoch_loss_sum, float(self.epoch_images)], dtype=torch.float64)
        if self.world > 1:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
        loss_sum, n_img = sums.tolist()
        row: dict[str, Any] = {
            "epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(n_img, 1),
            "train_images_per_s": n_img / max(self.epoch_time, 1e-9) if self.epoch_time else 0.0,
            "train_time_s": self.epoch_time,
        }
        if self.skipped:
            row["skipped_steps"] = self.skipped
        if not math.isfinite(row["train_loss"]):
            raise ZooError(f"the training loss became {row['train_loss']} in epoch {self.epoch + 1}; "
                           f"lower optim.lr, set optim.clip_grad, or check the data")
        last = self.epoch + 1 == self.num_epochs
        if (self.epoch + 1) % cfg.train.val_every == 0 or last:
            t0 = time.perf_counter()
            val = self.evaluate(self.model_without_ddp)
            row.update({f"val_{k}": v for k, v in val.items()})
            candidates = [("model", val)]
            if self.ema is not None:
                ema_val = self.evaluate(self.ema.module)
                row.update({f"ema_val_{k}": v for k, v in ema_val.items()})
                candidates.append(("ema", ema_val))
            row["val_time_s"] = time.perf_counter() - t0
            metric = self.task.metric
            which, best_val = max(candidates, key=lambda c: c[1][metric])
            weights = self.ema.module if which == "ema" else self.model_without_ddp
            if self.is_main:
                self.save_checkpoint(weights, "last", val if which == "model" else best_val, which)
            if not self.best or best_val[metric] > self.best["value"]:
                self.best = {"metric": metric, "value": best_val[metric], "epoch": self.epoch + 1, "weights": which,
                             "metrics": best_val}
                if self.is_main:
                    self.save_checkpoint(weights, "best", best_val, which)
            self.log(f"epoch {self.epoch + 1}/{self.num_epochs}  loss {row['train_loss']:.4f}  "
                     + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("val_", "ema_val_"))
                                 and isinstance(v, float) and not k.endswith("time_s"))
                     + f"  {row['train_images_per_s']:.0f} img/s")
        self.history.append(row)
        if self.is_main:
            self.write_metrics()
        self.epoch += 1
        self.batch = 0
        self.epoch_loss_sum, self.epoch_images, self.epoch_time = 0.0, 0, 0.0
        self.skipped = 0

    # ----------------------------------------------------------------------------------------------- outputs
    def metadata(self, metrics: Mapping[str, Any], weights: str) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        return {
            "model": cfg.model.name, "task": cfg.task, "head": cfg.model.head, "num_classes": data.num_classes,
            "class_names": data.class_names, "in_chans": data.in_chans,
            "input_size": [data.in_chans, cfg.data.img_size, cfg.data.img_size],
            "mean": list(data.mean), "std": list(data.std), "color": data.color, "data_config": data.data_config,
            "model_kwargs": {k: v for k, v in cfg.model.kwargs.items() if k != "drop_path_rate"},
            "epoch": self.epoch + 1, "step": self.step, "weights": weights, "metrics": dict(metrics),
            "params": dict(self.params),
            "dataset": cfg.data.dataset, "config": cfg.to_dict(), "git_revision": self._git,
            "lightzoo_version": zoo.__version__, "torch_version": torch.__version__,
        }

    def save_checkpoint(self, model: nn.Module, name: str, metrics: Mapping[str, Any], weights: str) -> Path:
        path = self.run_dir / f"{name}.safetensors"
        meta = self.metadata(metrics, weights)
        if self.peft_spec is not None:
            # the added weights, the head and anything else not frozen, plus a reference to the frozen base
            from zoo.peft import adapter_state_dict

            tensors, meta["peft"] = adapter_state_dict(model, self.peft_base)
            zoo.save_checkpoint(tensors, path, meta)
        else:
            zoo.save_checkpoint(model, path, meta)
        return path

    def write_metrics(self) -> None:
        jsonl = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history)
        atomic_write_bytes(self.run_dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(jsonl))
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                for r in self.history:
                    w.writerow({k: v for k, v in r.items() if not isinstance(v, (list, dict))})

        atomic_write_bytes(self.run_dir / "metrics.csv", write_csv)

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        self.setup()
        self._git = git_revision() if self.is_main else None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(_to_yaml(self.cfg.to_dict()))
        self._install_signals()
        self.log(f"training {self.cfg.model.name} ({self.cfg.task}) on {self.cfg.data.dataset}: "
                 f"{len(self.data.train)} train / {len(self.data.val)} val images, "
                 f"{self.num_epochs} epochs x {self.batches_per_epoch} batches of {self.cfg.data.batch_size}"
                 + (f" x {self.world} processes" if self.world > 1 else "") + f", device {self.device}")
        pc = self.params
        self.log(f"parameters: {pc['trainable']:,} trainable of {pc['total']:,} "
                 f"({100 * pc['trainable_fraction']:.2f}%)"
                 + (f"; {self.cfg.train.peft.method} on {len(self.peft_spec['targets'])} modules"
                    if self.peft_spec else "")
                 + (f"; distilling from {self.cfg.train.distill.teacher}" if self.distiller else ""))
        interrupted = False
        try:
            while self.epoch < self.num_epochs:
                if not self.train_epoch():
                    interrupted = True
                    break
                self.end_epoch()
                self.save_state()
                if self._should_stop():
                    interrupted = True
                    break
        finally:
            self._restore_signals()
        plot = None
        if self.is_main and self.history:
            plot = plot_curves(self.history, self.run_dir / "curves.png")
        result = {
            "out_dir": str(self.run_dir), "interrupted": interrupted, "signal": self._signal,
            "epoch": self.epoch, "step": self.step, "best_metric": self.best.get("metric", self.task.metric),
            "best": self.best.get("value"), "best_epoch": self.best.get("epoch"),
            "best_metrics": self.best.get("metrics", {}),
            "best_checkpoint": str(self.run_dir / "best.safetensors") if self.best else None,
            "last_checkpoint": str(self.run_dir / "last.safetensors") if self.best else None,
            "state": str(self.run_dir / STATE_FILE), "metrics_jsonl": str(self.run_dir / "metrics.jsonl"),
            "metrics_csv": str(self.run_dir / "metrics.csv"), "plot": str(plot) if plot else None,
            "history": self.history, "model": self.model_without_ddp, "params": dict(self.params),
        }
        return result

    def close(self) -> None:
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()


def _to_yaml(d: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(d), sort_keys=False)


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """Loss, validation metrics and learning rate per epoch, as one PNG (matplotlib, Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [r["epoch"] for r in history]
    metric_keys = [k for k in history[-1] if k.startswith(("val_", "ema_val_")) and not k.endswith(("loss", "time_s"))
                   and isinstance(history[-1][k], (int, float))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], label="train")
    for k in ("val_loss", "ema_val_loss"):
        pts = [(r["epoch"], r[k]) for r in history if k in r]
        if pts:
            axes[0].plot(*zip(*pts), label=k.replace("_loss", ""))
    axes[0].set_title("loss")
    for k in metric_keys:
        pts = [(r["epoch"], r[k]) for r in history if k in r]
        axes[1].plot(*zip(*pts), marker="o", ms=3, label=k)
    axes[1].set_title("validation")
    axes[2].plot(epochs, [r["lr"] for r in history])
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ public API
def fit(config: Config | Mapping[str, Any] | str | os.PathLike | None = None,
        overrides: Sequence[str] | Mapping[str, Any] = (), *, resume: str | os.PathLike | bool | None = None,
        data: DataBundle | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train a model; return where everything went and the best validation metrics.

    ``config``: a :class:`zoo.config.Config`, a mapping with the same nesting, a YAML path, or ``None`` for the
    defaults (``emov2_1m`` on digits). ``overrides``: ``["optim.lr=1e-3", ...]`` or ``{"optim.lr": 1e-3}``.
    ``resume``: ``True`` (the run folder's ``train_state.pt``), a run folder, or a state file; without ``config``
    the state's own config is used (``overrides`` still apply, e.g. ``train.epochs``).
    ``data``: an already built :class:`zoo.data.build.DataBundle` (custom datasets) instead of ``data.dataset``.
    Under ``torchrun`` every rank calls ``fit``; only rank 0 writes files.

    Returns a dict with ``best_metric`` (e.g. ``"top1"``), ``best`` (its value), ``best_epoch``, ``best_metrics``
    (all validation metrics of the best epoch), ``best_checkpoint`` / ``last_checkpoint`` (``.safetensors`` paths
    with JSON sidecars, loadable by ``zoo.create_model(checkpoint_path=...)``), ``state`` (resumable training
    state), ``metrics_jsonl``, ``metrics_csv``, ``plot`` (PNG), ``history`` (one dict per epoch), ``out_dir``,
    ``epoch`` / ``step`` reached, ``interrupted`` (stopped by a signal or ``train.stop_at_step``), ``params``
    (trainable / total parameter counts: with ``train.peft`` only the added modules, head and norms train) and
    ``model`` (the trained ``nn.Module``, last weights, on its training device).

    Raises :class:`zoo.errors.ConfigError` for a bad config and :class:`zoo.errors.CheckpointError` for a bad
    state file.
    """
    state = None
    if resume:
        path = resolve_state_path(resume, load_config(config, overrides) if resume in (True, "auto") else None)
        state = load_train_state(path)
        cfg = load_config(state["config"] if config is None else config, overrides)
    else:
        cfg = load_config(config, overrides)
    trainer = _Trainer(cfg, state, data, quiet)
    try:
        return trainer.run()
    finally:
        trainer.close()


def evaluate_checkpoint(checkpoint: str | os.PathLike, overrides: Sequence[str] | Mapping[str, Any] = (), *,
                        split: str | None = None, device: str = "auto", batch_size: int | None = None,
                        data: DataBundle | None = None) -> dict[str, Any]:
    """The task's metrics of a LightZoo checkpoint on a dataset's validation split (or ``split``).

    The dataset and preprocessing come from the checkpoint's sidecar (its training config, input size, mean/std),
    changed by ``overrides`` such as ``data.root=/data/other`` or ``data.dataset=folder``. Returns the metrics
    dict plus ``num_images``.
    """
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist")
    meta = zoo.read_metadata(checkpoint)
    if meta is None:
        raise CheckpointError(f"{str(checkpoint)!r} has no LightZoo sidecar (.json); `zoo eval` needs one of our "
                              f"checkpoints (official weights: load them with zoo.create_model(checkpoint_path=))")
    base = dict(meta.get("config") or {})
    base.setdefault("task", meta.get("task", "classification"))
    base.setdefault("model", {})["name"] = meta["model"]
    cfg = load_config(base, overrides)
    cfg.model.in_chans = int(meta.get("in_chans", 3))
    if cfg.data.mean is None and meta.get("mean") is not None:
        cfg.data.mean, cfg.data.std = list(meta["mean"]), list(meta["std"])
    if split is not None:
        cfg.data.val_split = split
    if batch_size is not None:
        cfg.data.val_batch_size = batch_size
    cfg.train.device = device
    trainer = _Trainer(cfg, None, data, quiet=True)
    trainer.device = _resolve_device(device, trainer.local_rank)
    trainer.amp_dtype = None
    trainer.task = get_task(cfg.task)
    trainer.data = data or trainer.task.build_data(cfg)
    if trainer.data.num_classes != meta.get("num_classes"):
        raise ConfigError(f"the dataset has {trainer.data.num_classes} classes but the checkpoint was trained "
                          f"with {meta.get('num_classes')}")
    model = zoo.create_model(checkpoint_path=checkpoint).to(trainer.device)
    trainer.task.setup(cfg, trainer.data, trainer.device)
    trainer.val_loader, _ = make_loader(
        trainer.data.val, cfg.data.val_batch_size or 2 * cfg.data.batch_size, train=False, seed=0, rank=0,
        world_size=1, workers=cfg.data.workers, collate_fn=trainer.data.collate_fn)
    metrics = trainer.evaluate(model)
    return {**metrics, "num_images": len(trainer.data.val)}
