"""Every task and every head on each of LightZoo's ``emov2_1m`` and ``lwganet_l0`` and on a small timm model:
a few training steps on a fixed synthetic batch (finite losses that decrease, gradients reaching the backbone) and
one eval pass whose output has the documented keys, shapes, dtypes and value ranges. Tiny inputs and narrow heads
keep the 30 cases at about 40 CPU-seconds in all (1 thread)."""

import math
import re
from pathlib import Path

import pytest
import torch

import zoo
import zoo.heads
from zoo.data.synthetic import synthetic_batch
from zoo.heads import TASK_HEADS

TIMM = "mobilenetv3_small_050"
BACKBONES = ("emov2_1m", "lwganet_l0", TIMM)
# LWGANet's stride-3 blur pool needs at least 96 x 96 (it raises an InputShapeError below that); 64 elsewhere
SIZES = {"lwganet_l0": 96}
STEPS = 4
# AdamW from scratch: the anchor heads (focal loss, RPN + ROI) want a gentler rate than the dense tasks; SSD's
# hard-negative-mined loss first rises on from-scratch EMOv2 and needs a brisker rate to fall within 4 steps.
# The backbone trains at BACKBONE_LR_MULT x the head's rate, as fine-tuning does: EMOv2's stage outputs start at
# layer scale 1e-6 (as in the official code), and one full-rate Adam step multiplies them ~5000x, which made the
# EMOv2 dense heads' losses rise on some seeds. Gradients clipped as mmdet does.
LR = {("detection", "retinanet"): 1e-3, ("detection", "fcos"): 1e-3, ("detection", "fasterrcnn"): 1e-3,
      ("detection", "ssdlite"): 1e-2}
BACKBONE_LR_MULT = 0.1
N_CLS = {"classification": 3, "detection": 3, "segmentation": 4, "change_detection": 2}
# narrow heads: the architecture is the same, only widths shrink
HEAD_KW = {
    ("detection", "retinanet"): dict(fpn_channels=32),
    ("detection", "fcos"): dict(fpn_channels=32),
    ("detection", "fasterrcnn"): dict(fpn_channels=32),
    ("detection", "ssdlite"): dict(extra_channels=(64, 32, 32, 16)),
    ("segmentation", "fpn"): dict(fpn_channels=32, channels=16, dropout=0.0),
    ("segmentation", "deeplabv3"): dict(atrous_rates=(1, 2, 3)),
    ("segmentation", "lraspp"): dict(inter_channels=16),
    ("segmentation", "unet"): dict(decoder_channels=(32, 16, 16, 16)),
    ("change_detection", "siamese_fpn"): dict(fpn_channels=32, deep_supervision=True, dropout=0.0),
}
# eval settings passed through to torchvision: keep every score (so the format checks always have boxes to look
# at) and at most MAX_DETS per image (so the pass-through itself is checked)
MAX_DETS = 5
DET_EVAL = {
    "retinanet": dict(score_thresh=0.0, detections_per_img=MAX_DETS, topk_candidates=50),
    "fcos": dict(score_thresh=0.0, detections_per_img=MAX_DETS, topk_candidates=50),
    "ssdlite": dict(score_thresh=0.0, detections_per_img=MAX_DETS, topk_candidates=50),
    "fasterrcnn": dict(box_score_thresh=0.0, box_detections_per_img=MAX_DETS),
}

ALL = [(t, h) for t, heads in TASK_HEADS.items() for h in heads]
# every head each backbone supports: all of them except "native", which only complete networks take
CASES = [(b, t, h) for b in BACKBONES for t, h in ALL if h in zoo.heads.supported_heads(b).get(t, [])]


def _build(backbone: str, task: str, head: str) -> torch.nn.Module:
    kw = dict(HEAD_KW.get((task, head), {}))
    if task == "detection":
        size = SIZES.get(backbone, 64)
        kw.update(min_size=size, max_size=size, **DET_EVAL[head])
    if task == "classification":  # create_model gives the bare timm classifier; the task model adds the loss
        return zoo.heads.build_task_model(task, backbone, head=head, num_classes=N_CLS[task], **kw)
    return zoo.create_model(backbone, task=task, head=head, num_classes=N_CLS[task], **kw)


def _call(model: torch.nn.Module, task: str, batch: dict, with_targets: bool = True):
    t = [batch["targets"]] if with_targets else []
    if task == "change_detection":
        return model(batch["image_a"], batch["image_b"], *t)
    return model(batch["images"], *t)


def _backbone(model: torch.nn.Module, task: str) -> torch.nn.Module:
    return model.model if task == "classification" else model.backbone


def _optimizer(model: torch.nn.Module, task: str, head: str) -> torch.optim.Optimizer:
    lr = LR.get((task, head), 5e-3)
    if task == "classification":  # the linear classifier sits inside the timm model: one group
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    body = {id(p) for p in _backbone(model, task).parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) in body], "lr": lr * BACKBONE_LR_MULT},
              {"params": [p for p in model.parameters() if id(p) not in body]}]
    assert groups[0]["params"] and groups[1]["params"]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)


@pytest.mark.parametrize("backbone,task,head", CASES, ids=[f"{b}-{t}-{h}" for b, t, h in CASES])
def test_train_steps_reduce_loss_and_eval_output_format(backbone, task, head):
    size = SIZES.get(backbone, 64)
    model = _build(backbone, task, head)
    assert getattr(model, "head_name", head) == head
    batch = synthetic_batch(task, batch_size=2, size=size, num_classes=N_CLS[task], seed=1)
    opt = _optimizer(model, task, head)
    # the first weight of the backbone's stem: it only moves if gradients flow through the whole backbone
    stem = next(p for p in _backbone(model, task).parameters() if p.requires_grad)
    stem_before = stem.detach().clone()
    model.train()
    totals = []
    for _ in range(STEPS):
        losses = _call(model, task, batch)
        assert isinstance(losses, dict) and losses, "train mode with targets must return a loss dict"
        assert all(v.ndim == 0 for v in losses.values()), {k: v.shape for k, v in losses.items()}
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], f"loss did not decrease over {STEPS} steps: {totals}"
    assert not torch.equal(stem.detach(), stem_before), "no gradient reached the backbone's stem"

    model.eval()
    with torch.no_grad():
        out = _call(model, task, batch, with_targets=False)
    n, c = 2, N_CLS[task]
    if task == "detection":
        assert isinstance(out, list) and len(out) == n
        for det in out:
            assert set(det) == {"boxes", "labels", "scores"}
            k = len(det["scores"])
            assert 1 <= k <= MAX_DETS, f"{k} detections with score_thresh 0 and at most {MAX_DETS} per image"
            assert det["boxes"].shape == (k, 4) and det["boxes"].dtype == torch.float32
            assert det["labels"].shape == (k,) and det["labels"].dtype == torch.int64
            assert det["scores"].shape == (k,) and det["scores"].dtype == torch.float32
            # labels 0 .. C-1 for every head (background slot hidden), boxes xyxy inside the input image
            assert 0 <= int(det["labels"].min()) and int(det["labels"].max()) < c, det["labels"]
            assert float(det["boxes"].min()) >= 0 and float(det["boxes"].max()) <= size
            assert bool((det["boxes"][:, 2:] >= det["boxes"][:, :2]).all())
            s = det["scores"]
            assert bool(((s >= 0) & (s <= 1)).all()) and bool((s[:-1] >= s[1:]).all()), s  # best first
    else:
        shape = (n, c) if task == "classification" else (n, c, size, size)
        assert isinstance(out, torch.Tensor) and out.shape == shape and out.dtype == torch.float32
        assert bool(torch.isfinite(out).all())


def test_readme_task_examples_run():
    # the README's one-example-per-task block, executed as written: a renamed argument or output key breaks this
    readme = Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text().split("<!-- section: tasks -->")[1].split("<!-- /section: tasks -->")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns: dict = {}
    exec(compile(code, f"{readme} (tasks section)", "exec"), ns)
    assert ns["logits"].shape == (2, 3) and math.isfinite(ns["loss"].item())
    assert isinstance(ns["preds"], list) and len(ns["preds"]) == 2
    assert all(set(p) == {"boxes", "labels", "scores"} and p["boxes"].shape[-1] == 4 for p in ns["preds"])
    assert ns["masks"].shape == (2, 96, 96) and ns["masks"].dtype == torch.int64
    assert ns["change"].shape == (2, 96, 96) and set(ns["change"].unique().tolist()) <= {0, 1}
    assert set(ns["losses"]) == {"loss_change", "loss_aux"}
