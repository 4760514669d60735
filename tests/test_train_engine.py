"""The training engine: exact resume, interruption, checkpoints and their metadata, freezing, outputs.

Everything runs a ~100k-parameter timm test network on a few dozen 16x16 synthetic images, so each fit takes
seconds; the properties checked (bit-identical weights, file contents) do not depend on the size.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from zoo.train.engine import STATE_FILE, evaluate_checkpoint, fit, load_train_state

import zoo
from zoo.config import load_config
from zoo.data.build import DataBundle, build_classification_data
from zoo.errors import CheckpointError, ConfigError

TINY = ["model.name=test_efficientnet", "data.dataset=synthetic", "data.img_size=16", "data.batch_size=8",
        "data.synth={num_images: 40, num_classes: 4}", "train.epochs=2", "train.progress=false",
        "sched.warmup_epochs=1", "optim.lr=0.01"]
# every source of state the resume must restore: EMA, mixup (numpy RNG), drop-path (torch RNG), accumulation
RICH = TINY + ["train.ema=true", "train.mixup=0.4", "train.accum_steps=2", "model.kwargs={drop_path_rate: 0.3}",
               "train.save_every=0"]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("full")
    r = fit(None, RICH + [f"out_dir={out}"], quiet=True)
    return {"weights": _weights(r["model"]), "ema": load_train_state(out / STATE_FILE)["ema"], "result": r}


@pytest.mark.parametrize("stop", [2, 3])  # 2: mid-epoch (after 4 of 5 batches); 3: the epoch's last step
def test_resume_after_stop_is_bit_identical(uninterrupted: dict, tmp_path: Path, stop: int) -> None:
    r1 = fit(None, RICH + [f"out_dir={tmp_path}", f"train.stop_at_step={stop}"], quiet=True)
    assert r1["interrupted"] and r1["step"] == stop
    st = load_train_state(tmp_path / STATE_FILE)
    assert (st["epoch"], st["step"]) == (0, stop)
    assert st["batch"] == (4 if stop == 2 else 5)
    r2 = fit(None, ["train.stop_at_step=null"], resume=tmp_path, quiet=True)
    assert not r2["interrupted"] and r2["epoch"] == 2
    _assert_identical(_weights(r2["model"]), uninterrupted["weights"])
    _assert_identical(load_train_state(tmp_path / STATE_FILE)["ema"], uninterrupted["ema"])
    assert [h["val_top1"] for h in r2["history"]] == [h["val_top1"] for h in uninterrupted["result"]["history"]]


class _SigtermAt(torch.utils.data.Dataset):
    """A dataset that sends SIGTERM to its own process when sample number ``at`` is loaded (a 'kill' mid-epoch)."""

    def __init__(self, base: torch.utils.data.Dataset, at: int) -> None:
        self.base, self.at, self.loaded = base, at, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        self.loaded += 1
        if self.loaded == self.at:
            signal.raise_signal(signal.SIGTERM)
        return self.base[i]


def test_sigterm_writes_a_state_that_resumes_exactly(uninterrupted: dict, tmp_path: Path) -> None:
    cfg = load_config(None, RICH)
    data = build_classification_data(cfg, None)
    killer = DataBundle(**{**data.__dict__, "train": _SigtermAt(data.train, at=11)})  # inside batch 2
    r1 = fit(cfg, [f"out_dir={tmp_path}"], data=killer, quiet=True)
    assert r1["interrupted"] and r1["signal"] == signal.SIGTERM
    assert r1["step"] == 1  # the step in flight (batches 1-2) finished, then the state was written
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    r2 = fit(None, resume=tmp_path / STATE_FILE, quiet=True)
    _assert_identical(_weights(r2["model"]), uninterrupted["weights"])


def test_truncated_foreign_and_mismatched_states_are_clear_errors(uninterrupted: dict, tmp_path: Path) -> None:
    good = Path(uninterrupted["result"]["state"]).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a LightZoo training state"):
        fit(None, resume=cut, quiet=True)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a LightZoo training state"):
        fit(None, resume=foreign, quiet=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        fit(None, resume=tmp_path / "missing.pt", quiet=True)
    other = RICH + ["model.name=test_resnet", f"out_dir={tmp_path}"]
    with pytest.raises(CheckpointError, match="is for classification / test_efficientnet"):
        fit(None, other, resume=uninterrupted["result"]["state"], quiet=True)


def test_checkpoint_metadata_and_reload(uninterrupted: dict) -> None:
    r = uninterrupted["result"]
    meta = zoo.read_metadata(r["best_checkpoint"])
    assert meta["model"] == "test_efficientnet" and meta["task"] == "classification"
    assert meta["num_classes"] == 4 and meta["class_names"] == ["class0", "class1", "class2", "class3"]
    assert meta["in_chans"] == 3 and meta["input_size"] == [3, 16, 16]
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["std"] == [1.0, 1.0, 1.0]
    assert meta["metrics"]["top1"] == r["best"] and meta["config"]["train"]["ema"] is True
    assert meta["weights"] in ("model", "ema") and "git_revision" in meta
    model = zoo.create_model(checkpoint_path=r["last_checkpoint"]).eval()
    # the last checkpoint holds the better of model/EMA at the last epoch; its metrics reproduce exactly
    last = zoo.read_metadata(r["last_checkpoint"])
    again = evaluate_checkpoint(r["last_checkpoint"], device="cpu")
    assert again["top1"] == last["metrics"]["top1"] and again["num_images"] == 10
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in r["model"].parameters())


def test_metrics_files_and_plot(uninterrupted: dict) -> None:
    r = uninterrupted["result"]
    rows = [json.loads(line) for line in Path(r["metrics_jsonl"]).read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert {"train_loss", "lr", "val_top1", "ema_val_top1", "train_images_per_s"} <= rows[0].keys()
    csv_lines = Path(r["metrics_csv"]).read_text().splitlines()
    assert len(csv_lines) == 3 and "val_top1" in csv_lines[0]
    assert Path(r["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["best"] == max(max(row["val_top1"], row["ema_val_top1"]) for row in rows)


@pytest.mark.parametrize("freeze", [-1, 1])
def test_freeze_keeps_the_backbone_fixed(tmp_path: Path, freeze: int) -> None:
    torch.manual_seed(0)
    init = _weights(zoo.create_model("test_efficientnet", num_classes=4))
    r = fit(None, TINY + [f"out_dir={tmp_path}", f"model.freeze={freeze}", "train.epochs=1"], quiet=True)
    after = _weights(r["model"])
    changed = {k for k in init if k in after and not torch.equal(init[k], after[k])}
    if freeze == -1:
        assert changed == {"classifier.weight", "classifier.bias"}
    else:  # stem + the first feature stage (blocks.0) stay; blocks.1 onwards train
        assert not any(k.startswith(("conv_stem", "bn1", "blocks.0.")) for k in changed)
        assert any(k.startswith("blocks.1.") for k in changed)
    with pytest.raises(ConfigError, match="feature stages"):
        fit(None, TINY + [f"out_dir={tmp_path}", "model.freeze=9"], quiet=True)


@pytest.mark.parametrize("task, metric", [("segmentation", "miou"), ("change_detection", "f1")])
def test_dense_tasks_train_and_reload(tmp_path: Path, task: str, metric: str) -> None:
    r = fit(None, ["model.name=test_efficientnet", f"task={task}", "data.dataset=synthetic", "data.img_size=32",
                   "data.batch_size=4", "data.synth={num_images: 8, num_classes: 2}", "train.epochs=1",
                   "train.progress=false", f"out_dir={tmp_path}"], quiet=True)
    assert r["best_metric"] == metric and 0.0 <= r["best"] <= 1.0
    meta = zoo.read_metadata(r["best_checkpoint"])
    assert meta["task"] == task and meta["num_classes"] == (3 if task == "segmentation" else 2)
    model = zoo.create_model(checkpoint_path=r["best_checkpoint"]).eval()
    r["model"].eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        args = (x,) if task == "segmentation" else (x, x.flip(-1))
        assert torch.equal(model(*args), r["model"](*args))


def test_a_run_never_overwrites_the_checkpoint_it_starts_from(tmp_path) -> None:
    """Fine-tuning ``runs/x/best.safetensors`` into ``runs/x`` would overwrite it at the first save: refused in one
    line. ``train.qat`` runs default to their own ``-qat`` folder."""
    from zoo.errors import ConfigError

    run = tmp_path / "run"
    cfg = {"model": {"name": "test_efficientnet", "checkpoint": str(run / "best.safetensors")},
           "out_dir": str(run), "train": {"epochs": 1}}
    with pytest.raises(ConfigError, match="is in this run's folder"):
        fit(cfg)
    assert not run.exists()
    assert str(load_config({"train": {"qat": True}}).run_dir) == "runs/emov2_1m-digits-qat"
    assert str(load_config({}).run_dir) == "runs/emov2_1m-digits"
