"""Knowledge distillation for classification: a frozen teacher's logits as a second training signal.

``train.distill.teacher`` names the teacher (a LightZoo checkpoint, or ``model[:tag]`` with pretrained weights);
``train.distill.type`` picks the signal:

- ``soft`` (Hinton et al. 2015): ``T^2 * KL(softmax(t / T) || softmax(s / T))``, ``T`` = ``temperature``;
- ``hard`` (DeiT's hard-label distillation): cross-entropy of the student against the teacher's argmax.

The loss is ``(1 - weight) * task loss + weight * distillation loss``. The teacher sees exactly the student's input
(after mixup/cutmix), runs in eval mode under ``torch.inference_mode`` and inside the same autocast as the student,
so AMP applies to it too. It draws no random numbers, so an interrupted run resumes bit-identically.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.config import DistillConfig
from zoo.errors import ConfigError


def _num_classes(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    return int(n) if n is not None else None


def build_teacher(spec: str, num_classes: int, device: torch.device) -> nn.Module:
    """The teacher in eval mode with frozen weights; its number of classes must be the data's."""
    path = Path(spec)
    if path.is_file():
        teacher = zoo.create_model(checkpoint_path=path)
    elif os.sep in spec or spec.endswith((".safetensors", ".pth", ".pt")):
        raise ConfigError(f"train.distill.teacher: checkpoint {spec!r} does not exist")
    else:
        name, _, tag = spec.partition(":")
        teacher = zoo.create_model(name, pretrained=tag or True)
    n = _num_classes(teacher)
    if n != num_classes:
        raise ConfigError(f"train.distill.teacher {spec!r} predicts {n} classes but the data has {num_classes}; "
                          f"distil from a teacher trained on the same classes")
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


class Distiller:
    """Adds the teacher's signal to the task loss of one training step (see the module docstring)."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module) -> None:
        self.cfg = cfg
        self.teacher = teacher

    @contextlib.contextmanager
    def capture(self, student: nn.Module) -> Iterator[dict[str, Any]]:
        """Record the student's input and logits during the task's forward (the task adapter stays unchanged)."""
        seen: dict[str, Any] = {}

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            seen["input"], seen["logits"] = args[0], output

        handle = student.register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()

    def combine(self, task_loss: torch.Tensor, seen: dict[str, Any]) -> torch.Tensor:
        """``(1 - weight) * task_loss + weight * distillation loss``; call inside the step's autocast."""
        student = seen["logits"]
        with torch.inference_mode():
            teacher = self.teacher(seen["input"])
        teacher = teacher.clone().float()  # a normal tensor: inference tensors cannot enter autograd
        student = student.float()
        c = self.cfg
        if c.type == "hard":
            kd = F.cross_entropy(student, teacher.argmax(dim=-1))
        else:
            t = c.temperature
            kd = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                          reduction="batchmean", log_target=True) * (t * t)
        return (1.0 - c.weight) * task_loss + c.weight * kd
