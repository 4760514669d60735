"""DDP under torchrun on CPU (gloo): two processes, a few steps; both ranks must end with the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from zoo.train.engine import evaluate_checkpoint

import zoo

SCRIPT = """
import json, os, sys, torch
from zoo.train.engine import fit
out = sys.argv[1]
r = fit(None, sys.argv[2:] + [f"out_dir={out}/run"], quiet=True)
rank = os.environ["RANK"]
torch.save(r["model"].state_dict(), f"{out}/rank{rank}.pt")
json.dump(r["history"], open(f"{out}/history{rank}.json", "w"))
"""

ARGS = ["model.name=test_efficientnet", "data.dataset=synthetic", "data.img_size=16", "data.batch_size=4",
        "data.synth={num_images: 24, num_classes: 3}", "train.epochs=1", "train.progress=false",
        "model.kwargs={drop_path_rate: 0.2}", "optim.lr=0.01", "sched.warmup_epochs=0"]


def test_two_cpu_ranks_end_identical_and_metrics_cover_the_whole_val_set(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path), *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    init = zoo.create_model("test_efficientnet", num_classes=3).state_dict()
    assert not torch.equal(w0["classifier.weight"], init["classifier.weight"])  # it did train
    h0 = json.loads((tmp_path / "history0.json").read_text())
    h1 = json.loads((tmp_path / "history1.json").read_text())
    assert h0 == [{**h1[0], **{k: h0[0][k] for k in h0[0] if k.endswith("time_s") or "per_s" in k}}]
    # 24 images / (2 ranks x batch 4) = 3 optimizer steps; rank 0 alone wrote the files
    assert h0[0]["step"] == 3
    assert (tmp_path / "run" / "last.safetensors").is_file()
    # the all-gathered validation accuracy equals a single-process evaluation of the saved weights
    # (8 validation images split 4 + 4 with no padding, so nothing is counted twice)
    single = evaluate_checkpoint(tmp_path / "run" / "last.safetensors", device="cpu")
    assert single["num_images"] == 8 and single["top1"] == h0[0]["val_top1"]
