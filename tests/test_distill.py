"""Knowledge distillation (``train.distill``): the loss it adds, exact resume with a teacher, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from zoo.train.distill import Distiller
from zoo.train.engine import STATE_FILE, fit, load_train_state

import zoo
from zoo.config import DistillConfig
from zoo.errors import ConfigError

TINY = ["model.name=test_efficientnet", "data.dataset=synthetic", "data.img_size=16", "data.batch_size=8",
        "data.synth={num_images: 40, num_classes: 4}", "train.epochs=2", "train.progress=false",
        "sched.warmup_epochs=1", "optim.lr=0.01", "train.save_every=0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    model = zoo.create_model("test_resnet", num_classes=4)
    path = out / "teacher.safetensors"
    zoo.save_checkpoint(model, path, {"model": "test_resnet", "task": "classification", "num_classes": 4})
    return path


class _Fixed(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_soft_and_hard_losses_follow_their_definitions() -> None:
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    task = torch.tensor(0.7)
    soft = Distiller(DistillConfig(teacher="x", type="soft", weight=0.25, temperature=2.0), _Fixed(t))
    kl = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    torch.testing.assert_close(soft.combine(task, {"input": None, "logits": s}), 0.75 * task + 0.25 * kl)
    hard = Distiller(DistillConfig(teacher="x", type="hard", weight=0.5), _Fixed(t))
    ce = F.cross_entropy(s, t.argmax(-1))
    torch.testing.assert_close(hard.combine(task, {"input": None, "logits": s}), 0.5 * task + 0.5 * ce)


def test_teacher_changes_training_and_stays_frozen(teacher: Path, tmp_path: Path) -> None:
    plain = fit(None, TINY + [f"out_dir={tmp_path / 'plain'}", "train.epochs=1"], quiet=True)
    kd = fit(None, TINY + [f"out_dir={tmp_path / 'kd'}", "train.epochs=1", f"train.distill.teacher={teacher}",
                           "train.distill.weight=0.9", "train.distill.temperature=4"], quiet=True)
    a, b = plain["model"].state_dict(), kd["model"].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert zoo.checkpoint.read_state_dict(teacher).keys()  # the teacher file is untouched and still loads


@pytest.mark.parametrize("kd_type", ["soft", "hard"])
def test_resume_with_a_teacher_is_bit_identical(teacher: Path, tmp_path: Path, kd_type: str) -> None:
    args = TINY + [f"train.distill.teacher={teacher}", f"train.distill.type={kd_type}", "train.mixup=0.4",
                   "train.ema=true"]
    full = fit(None, args + [f"out_dir={tmp_path / 'full'}"], quiet=True)
    part = tmp_path / "part"
    assert fit(None, args + [f"out_dir={part}", "train.stop_at_step=3"], quiet=True)["interrupted"]
    again = fit(None, ["train.stop_at_step=null"], resume=part, quiet=True)
    a, b = full["model"].state_dict(), again["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = (load_train_state(d / STATE_FILE)["ema"] for d in (tmp_path / "full", part))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_teacher_with_other_classes_or_task_is_a_one_line_config_error(tmp_path: Path) -> None:
    other = tmp_path / "t10.safetensors"
    zoo.save_checkpoint(zoo.create_model("test_resnet", num_classes=10), other,
                        {"model": "test_resnet", "task": "classification", "num_classes": 10})
    with pytest.raises(ConfigError, match="predicts 10 classes but the data has 4") as e:
        fit(None, TINY + [f"train.distill.teacher={other}", f"out_dir={tmp_path}"], quiet=True)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        fit(None, TINY + [f"train.distill.teacher={tmp_path / 'missing.safetensors'}", f"out_dir={tmp_path}"],
            quiet=True)
    with pytest.raises(ConfigError, match="distils classification logits"):
        fit(None, TINY + ["task=segmentation", f"train.distill.teacher={other}"], quiet=True)
