"""The trainer's view of a task: two adapters, both driven by the task model class from ``zoo.heads``.

An adapter knows how to build its datasets and model from a config, how to turn a batch into a scalar loss, and
how to accumulate the task's metrics over a validation set. What differs between tasks (the metric that picks
the best checkpoint, the batch keys of the images, the metric meter, the detector's internal size) is read from
the registered task model class, so nothing here compares task names. :class:`ClassificationTask` trains the bare
timm classifier with an external criterion (mixup, label smoothing); :class:`ModelLossTask` trains every task model
that returns its own loss dict. The engine (``train.engine``) does everything else (optimisation, precision, EMA,
checkpoints, resume, DDP) identically for all tasks.

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
from zoo.factory import overlay_data_config
from zoo.heads import get_head
from zoo.heads import get_task as get_task_class
from zoo.heads.base import TaskModel
from zoo.heads.classification import ClassificationModel
from zoo.metrics import ConfusionMeter

from .data.build import DataBundle, build_classification_data


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
    """Base adapter for the task model class ``model_cls``. ``metric`` is the validation key that selects the best
    checkpoint (higher is better). ``loss_outside_model``: the training loss is computed from the model's
    predictions (so an exported inference graph, as ``train.qat`` trains, can stand in for the model)."""

    loss_outside_model = False

    def __init__(self, model_cls: type[TaskModel]) -> None:
        self.model_cls = model_cls
        self.name = model_cls.task
        self.metric = model_cls.metric

    def build_data(self, cfg: Any) -> DataBundle:
        raise TypeError

    def build_model(self, cfg: Any, data: DataBundle) -> nn.Module:
        """The model, with size-dependent arguments from ``data.img_size`` (a detector's internal resize) and
        the data's resolved preprocessing as its data config."""
        m = cfg.model
        head_cls = get_head(self.name, m.head).model_class or self.model_cls
        kwargs = {**head_cls.size_kwargs(cfg.data.img_size), **m.kwargs}
        model = zoo.create_model(m.name, pretrained=m.pretrained, num_classes=data.num_classes,
                                 in_chans=data.in_chans, task=self.name, head=m.head, **kwargs)
        if m.checkpoint:
            zoo.load_checkpoint(model, m.checkpoint)
        if data.data_config:
            overlay_data_config(model, {"data_config": data.data_config})
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

    loss_outside_model = True

    def __init__(self, model_cls: type[TaskModel] = ClassificationModel) -> None:
        super().__init__(model_cls)
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


def get_task(name: str) -> Task:
    """The adapter for the registered task ``name`` (a ``ConfigError`` listing the tasks otherwise)."""
    model_cls = get_task_class(name)
    if issubclass(model_cls, ClassificationModel):  # the bare timm classifier and an external criterion
        return ClassificationTask(model_cls)
    return ModelLossTask(model_cls)


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
    """A confusion matrix summed over the dataset (a ``zoo.metrics`` meter chosen by the task model class:
    mIoU/Dice, or change F1/IoU)."""

    def __init__(self, meter: ConfusionMeter) -> None:
        self.meter = meter

    def update(self, output: Any, batch: Any) -> None:
        self.meter.update(output.detach().float().cpu(), batch["targets"].cpu())

    def merge(self, other: Accumulator) -> None:
        assert isinstance(other, ConfusionAccumulator)
        self.meter.cm += other.meter.cm

    def compute(self) -> dict[str, float]:
        return {k: v for k, v in self.meter.compute().items() if isinstance(v, float)}


class ModelLossTask(Task):
    """Detection, segmentation and change detection: the task model returns its loss dict in train mode."""

    def __init__(self, model_cls: type[TaskModel]) -> None:
        super().__init__(model_cls)
        self.inputs = model_cls.batch_keys

    def build_data(self, cfg: Any) -> DataBundle:
        from .data.build import build_dense_data

        return build_dense_data(cfg, self.name)

    def to_device(self, batch: Any, device: torch.device, channels_last: bool) -> Any:
        return {k: _move(v, device, channels_last and k in self.inputs) for k, v in batch.items()}

    def batch_size(self, batch: Any) -> int:
        return len(batch[self.inputs[0]])

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images = [batch[k] for k in self.inputs]
        qat_loss = getattr(getattr(model, "module", model), "qat_loss", None)  # a QAT graph (zoo.quantization)
        losses = qat_loss(model(*images), batch["targets"]) if qat_loss else model(*images, batch["targets"])
        return sum(losses.values())  # type: ignore[return-value]

    def predict(self, model: nn.Module, batch: Any) -> Any:
        return model(*(batch[k] for k in self.inputs))

    def accumulator(self, data: DataBundle) -> Accumulator:
        meter = self.model_cls.meter(data.num_classes)
        if isinstance(meter, ConfusionMeter):
            return ConfusionAccumulator(meter)
        return DetectionAccumulator(data.num_classes)


def _move(value: Any, device: torch.device, channels_last: bool) -> Any:
    """Tensors, lists of image tensors and lists of target dicts (detection) onto ``device``."""
    if isinstance(value, torch.Tensor):
        return _to(value, device, channels_last)
    if isinstance(value, list):
        return [_move(v, device, False) for v in value]
    if isinstance(value, dict):
        return {k: _move(v, device, False) for k, v in value.items()}
    return value
