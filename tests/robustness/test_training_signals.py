"""Training that is interrupted (SIGINT, SIGTERM, a second SIGINT, SIGKILL) or meets a NaN/Inf loss.

The kill test runs ``zoo train`` in child processes (forked from the test, running the console script's entry
point ``zoo.cli.main``) and interrupts it five times at seeded-random optimizer steps, resuming each time, then
checks that the final weights, EMA and optimizer state equal those of one uninterrupted run bit for bit. It reads
the plain ``step N`` lines the trainer prints when the progress bar is off, so each signal lands while a given
step is being computed; the process then finishes the step in flight, writes its state and exits, and the next
run must continue exactly where it stopped.
"""

from __future__ import annotations

import io
import math
import os
import random
import re
import signal
import sys
import threading
from pathlib import Path
from typing import IO

import pytest
import torch
from zoo.train.engine import STATE_FILE, fit, load_train_state

from zoo.config import load_config
from zoo.errors import ConfigError, ZooError
from zoo.tasks import ClassificationTask

# ~100k parameters, 64 16x16 images, 8 batches of 8, 2 micro-batches per update: 4 updates per epoch, 12 in all.
# EMA, mixup (numpy RNG) and drop-path (torch RNG) make every source of state count in the comparison.
RUN = ["model.name=test_efficientnet", "data.dataset=synthetic", "data.img_size=16", "data.batch_size=8",
       "data.synth={num_images: 64, num_classes: 4}", "train.epochs=3",
       "train.progress=false", "train.log_every=1", "train.save_every=1", "sched.warmup_epochs=1", "optim.lr=0.01",
       "train.ema=true", "train.mixup=0.4", "train.accum_steps=2", "model.kwargs={drop_path_rate: 0.2}"]
TOTAL_STEPS = 12
STEP_LINE = re.compile(r"^step (\d+) ")


def _zoo(args: list[str]) -> tuple[int, IO[str], IO[str]]:
    """Start ``zoo train ARGS`` in a child process forked from this one: ``zoo.cli.main``, the console script's
    own entry point (exit codes, messages), without paying 3-30 s of ``import torch`` per start."""
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        rc = 70
        try:
            os.dup2(w_out, 1)
            os.dup2(w_err, 2)
            for fd in (r_out, r_err, w_out, w_err):
                os.close(fd)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            from zoo.cli import main

            rc = main(["train", *args])
        except BaseException:  # noqa: BLE001 - report anything, then leave without pytest's teardown
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    os.close(w_out)
    os.close(w_err)
    return pid, os.fdopen(r_out, "r"), os.fdopen(r_err, "r")


def _wait(pid: int) -> int:
    """The child's exit status in ``subprocess`` convention (negative: killed by that signal)."""
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _interrupt(args: list[str], at_step: int, how: str) -> tuple[int, str, str]:
    """Run ``zoo train ARGS``; once it prints ``step >= at_step``, interrupt it ``how``; return rc, out, err."""
    pid, out_f, err_f = _zoo(args)
    err_lines: list[str] = []
    heard = threading.Event()

    def read_err() -> None:
        for line in err_f:
            err_lines.append(line)
            if "finishing this step" in line:
                heard.set()

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    out_lines = []
    for line in out_f:
        out_lines.append(line)
        m = STEP_LINE.match(line)
        if m and int(m.group(1)) >= at_step:
            if how == "SIGKILL":
                os.kill(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGINT if how.endswith("SIGINT") else signal.SIGTERM)
                if how == "double SIGINT":
                    heard.wait(60)  # a second signal before the first was handled would merge with it
                    os.kill(pid, signal.SIGINT)
            break
    out_lines += out_f.readlines()
    rc = _wait(pid)
    reader.join(60)
    out_f.close()
    err_f.close()
    return rc, "".join(out_lines), "".join(err_lines)


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a nested state (model, EMA, optimizer) under a path-like key."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}/{k}"))
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_five_random_kills_resume_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    full = fit(None, RUN + [f"out_dir={tmp_path / 'full'}"], quiet=True)
    assert full["step"] == TOTAL_STEPS
    want = load_train_state(tmp_path / "full" / STATE_FILE)

    run = tmp_path / "killed"
    points = sorted(random.Random(10).sample(range(1, TOTAL_STEPS - 2), 5))
    kinds = ["SIGINT", "SIGTERM", "double SIGINT", "SIGKILL", "SIGTERM"]
    stopped_at: list[int] = []
    prev: dict = {}
    for n, (at, how) in enumerate(zip(points, kinds)):
        args = RUN + [f"out_dir={run}"] if n == 0 else ["--resume", str(run)]
        rc, out, err = _interrupt(args, at, how)
        state = load_train_state(run / STATE_FILE)  # after any kill the state on disk is complete and loadable
        if how == "SIGKILL":
            assert rc == -signal.SIGKILL
        elif how == "double SIGINT":
            # the second signal stops at once; either it came before the step in flight finished (the previous
            # step's state stays) or the first one had already written its state
            assert rc == 130, err
            assert "zoo train: interrupted" in err, err
            if "second SIGINT" in err:  # it landed before the step in flight was saved: the old state stays
                assert "second SIGINT: stopping at once without a new state; the last saved state" in err
                assert f"step {state['step']}) is intact" in err, err
        else:
            sig = signal.SIGINT if how == "SIGINT" else signal.SIGTERM
            assert rc == 128 + sig, err
            assert f"{sig.name}: finishing this step, then writing a resumable state" in err
            assert f"stopped at epoch {state['epoch'] + 1}, step {state['step']}" in out
            assert f"continue with: zoo train --resume {run}" in out
            assert state["step"] >= at
        if n:
            assert f"resumed at epoch {prev['epoch'] + 1}, batch {prev['batch']}, step {prev['step']}" in out
        assert state["step"] < TOTAL_STEPS, f"{how} at step {at} came too late to interrupt the run"
        stopped_at.append(state["step"])
        prev = state
    print(f"{kinds} at steps {points}: states at steps {stopped_at}")
    assert len(stopped_at) == 5 and stopped_at == sorted(stopped_at)

    pid, out_f, err_f = _zoo(["--resume", str(run), "-q"])
    err = err_f.read()
    out_f.read()
    assert _wait(pid) == 0, err
    got = load_train_state(run / STATE_FILE)
    assert got["step"] == TOTAL_STEPS
    for part in ("model", "ema", "optimizer"):
        a, b = _tensors(got[part]), _tensors(want[part])
        assert a.keys() == b.keys()
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert not bad, f"{part}: {len(bad)} tensors differ after kills at {stopped_at}, e.g. {bad[:3]}"
    assert [h["val_top1"] for h in got["history"]] == [h["val_top1"] for h in want["history"]]


# ------------------------------------------------------------------------------------------ NaN / Inf losses
TINY = ["model.name=test_efficientnet", "data.dataset=synthetic", "data.img_size=16", "data.batch_size=8",
        "data.synth={num_images: 40, num_classes: 4}", "train.epochs=1", "train.progress=false",
        "train.save_every=1", "sched.warmup_epochs=0", "optim.lr=0.01"]


@pytest.fixture
def nan_at_call_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The third loss of the run is NaN (what a diverging learning rate produces), the others are real."""
    real = ClassificationTask.loss
    calls = {"n": 0}

    def loss(self: ClassificationTask, model: torch.nn.Module, batch: object) -> torch.Tensor:
        calls["n"] += 1
        out = real(self, model, batch)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(ClassificationTask, "loss", loss)


def test_nonfinite_loss_stops_by_default_naming_the_step_and_causes(nan_at_call_3: None, tmp_path: Path) -> None:
    with pytest.raises(ZooError) as e:
        fit(None, TINY + [f"out_dir={tmp_path}"], quiet=True)
    msg = str(e.value)
    assert "the training loss became nan at step 3 (epoch 1, batch 3/5), before the update was applied" in msg
    assert "a learning rate too high (optim.lr=0.01" in msg and "NaN/Inf in the data" in msg
    assert "train.nonfinite=skip" in msg and f"{tmp_path / STATE_FILE}, step 2) is intact" in msg
    state = load_train_state(tmp_path / STATE_FILE)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_loss_skip_drops_only_that_update(nan_at_call_3: None, tmp_path: Path) -> None:
    r = fit(None, TINY + [f"out_dir={tmp_path}", "train.nonfinite=skip"], quiet=True)
    assert not r["interrupted"] and r["step"] == 4  # 5 batches, one update dropped
    assert r["history"][0]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in r["model"].state_dict().values() if v.is_floating_point())
    assert math.isfinite(r["history"][0]["train_loss"])  # the dropped NaN is not averaged in


def test_nonfinite_option_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"'train.nonfinite' must be one of stop, skip; got 'ignore'"):
        load_config(None, ["train.nonfinite=ignore"])
