"""One small adapter per task: the only task-specific code in the trainer.

An adapter knows how to build its datasets and model from a config, how to turn a batch into a scalar loss, and
how to accumulate the task's metrics over a validation set. The engine (``train.engine``) does everything else
(optimisation, precision, EMA, checkpoints, resume, DDP) identically for all four tasks.

Evaluation accumulators are plain picklable objects with ``update`` / ``merge`` / ``compute`` so that distributed
evaluation can gather them from every rank and merge them before computing a metric (a mean of per-rank mAPs or
mIoUs would be wrong).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import zoo
from zoo.errors import ConfigError

from .data import DataBundle, build_classification_data


class Accumulator:
    """Task metrics over a dataset, mergeable across ranks."""

    def update(self, output: Any, batch: Any) -> None:
        raise TypeError

    def merge(self, other: Accumulator) -> None:
        raise TypeError

    def compute(self) -> dict[str, float]:
        raise TypeError


class ClassificationAccumulator(Accumulator):
    """Top-1 / top-5 accuracy (fractions) and mean cross-entropy, from running sums."""

    def __init__(self, num_classes: int) -> None:
        self.k = min(5, num_classes)
        self.correct1 = 0
        self.correctk = 0
        self.loss_sum = 0.0
        self.n = 0

    def update(self, output: torch.Tensor, batch: Any) -> None:
        target = batch[1].to(output.device)
        logits = output.float()
        top = logits.topk(self.k, dim=1).indices
        hit = top.eq(target.view(-1, 1))
        self.correct1 += int(hit[:, 0].sum())
        self.correctk += int(hit.any(dim=1).sum())
        self.loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        self.n += int(target.numel())

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, ClassificationAccumulator)
        self.correct1 += other.correct1
        self.correctk += other.correctk
        self.loss_sum += other.loss_sum
        self.n += other.n

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"top1": self.correct1 / n, f"top{self.k}": self.correctk / n, "loss": self.loss_sum / n}


class Task:
    """Base adapter. ``metric`` is the validation key that selects the best checkpoint (higher is better)."""

    name = ""
    metric = ""

    def build_data(self, cfg: Any) -> DataBundle:
        raise TypeError

    def build_model(self, cfg: Any, data: DataBundle) -> nn.Module:
        m = cfg.model
        model = zoo.create_model(m.name, pretrained=m.pretrained, num_classes=data.num_classes,
                                 in_chans=data.in_chans, task=self.name, head=m.head, **m.kwargs)
        if m.checkpoint:
            zoo.load_checkpoint(model, m.checkpoint)
        return model

    def setup(self, cfg: Any, data: DataBundle, device: torch.device) -> None:
        """Build losses/mixers that need the data's facts (classification: criterion and mixup)."""

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> Any:
        raise TypeError

    def batch_size(self, batch: Any) -> int:
        raise TypeError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise TypeError

    def predict(self, model: nn.Module, batch: Any) -> Any:
        raise TypeError

    def accumulator(self, data: DataBundle) -> Accumulator:
        raise TypeError


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class ClassificationTask(Task):
    """Images ``(N, C, H, W)`` and class indices; timm's losses and ``Mixup``."""

    name = "classification"
    metric = "top1"

    def __init__(self) -> None:
        self.criterion: nn.Module = nn.CrossEntropyLoss()
        self.mixup: Any = None

    def build_data(self, cfg: Any) -> DataBundle:
        return build_classification_data(cfg, cfg.model.in_chans)

    def setup(self, cfg: Any, data: DataBundle, device: torch.device) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        t = cfg.train
        if t.mixup > 0 or t.cutmix > 0:
            if cfg.data.batch_size % 2:
                raise ConfigError(f"mixup/cutmix mix pairs within a batch: data.batch_size must be even, "
                                  f"got {cfg.data.batch_size}")
            self.mixup = Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, prob=t.mixup_prob,
                               switch_prob=t.mixup_switch_prob, label_smoothing=t.label_smoothing,
                               num_classes=data.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif t.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=t.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> Any:
        x, y = batch
        return _to(x, device, channels_last), y.to(device, non_blocking=True)

    def batch_size(self, batch: Any) -> int:
        return int(batch[0].shape[0])

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return self.criterion(model(x), y)

    def predict(self, model: nn.Module, batch: Any) -> Any:
        return model(batch[0])

    def accumulator(self, data: DataBundle) -> Accumulator:
        return ClassificationAccumulator(data.num_classes)


TASKS: dict[str, Any] = {"classification": ClassificationTask}


def get_task(name: str) -> Task:
    if name not in TASKS:
        if name in zoo.TASKS:
            raise ConfigError(f"task {name!r} needs zoo.heads / zoo.data support that is not installed yet")
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(zoo.TASKS)}")
    return TASKS[name]()


class DetectionAccumulator(Accumulator):
    """Predictions and targets kept on the CPU; COCO mAP (pycocotools) over all of them at the end."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.preds: list[dict[str, torch.Tensor]] = []
        self.targets: list[dict[str, torch.Tensor]] = []

    def update(self, output: Any, batch: Any) -> None:
        self.preds += [{k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in p.items()}
                       for p in output]
        self.targets += [{k: v.cpu() for k, v in t.items() if isinstance(v, torch.Tensor)} for t in batch["targets"]]

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, DetectionAccumulator)
        self.preds += other.preds
        self.targets += other.targets

    def compute(self) -> dict[str, float]:
        from zoo.metrics import CocoEvaluator

        ev = CocoEvaluator(self.num_classes)
        ev.update(self.preds, self.targets)
        return ev.compute()


class ConfusionAccumulator(Accumulator):
    """A confusion matrix summed over the dataset (``zoo.metrics`` meters): mIoU/Dice, or change F1/IoU."""

    def __init__(self, num_classes: int, change: bool) -> None:
        from zoo.metrics import ChangeMeter, ConfusionMeter

        self.meter = ChangeMeter(num_classes) if change else ConfusionMeter(num_classes)

    def update(self, output: Any, batch: Any) -> None:
        self.meter.update(output.detach().float().cpu(), batch["targets"].cpu())

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, ConfusionAccumulator)
        self.meter.cm += other.meter.cm

    def compute(self) -> dict[str, float]:
        return {k: v for k, v in self.meter.compute().items() if isinstance(v, float)}


class DenseTask(Task):
    """Detection, segmentation and change detection: the task model returns its loss dict in train mode."""

    inputs: tuple[str, ...] = ("images",)

    def __init__(self, name: str) -> None:
        self.name = name
        self.metric = {"detection": "map", "segmentation": "miou", "change_detection": "f1"}[name]
        self.inputs = ("image_a", "image_b") if name == "change_detection" else ("images",)

    def build_data(self, cfg: Any) -> DataBundle:
        from .data import build_dense_data

        return build_dense_data(cfg, self.name)

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> Any:
        out = dict(batch)
        if self.name == "detection":
            out["images"] = [im.to(device, non_blocking=True) for im in batch["images"]]
            out["targets"] = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                              for t in batch["targets"]]
            return out
        for k in self.inputs:
            out[k] = _to(batch[k], device, channels_last)
        out["targets"] = batch["targets"].to(device, non_blocking=True)
        return out

    def batch_size(self, batch: Any) -> int:
        return len(batch[self.inputs[0]])

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        losses = model(*(batch[k] for k in self.inputs), batch["targets"])
        return sum(losses.values())  # type: ignore[return-value]

    def predict(self, model: nn.Module, batch: Any) -> Any:
        return model(*(batch[k] for k in self.inputs))

    def accumulator(self, data: DataBundle) -> Accumulator:
        if self.name == "detection":
            return DetectionAccumulator(data.num_classes)
        return ConfusionAccumulator(data.num_classes, change=self.name == "change_detection")


for _name in ("detection", "segmentation", "change_detection"):
    TASKS[_name] = lambda _n=_name: DenseTask(_n)  # type: ignore[assignment,misc]
