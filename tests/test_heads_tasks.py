"""Every task and head trains (finite, decreasing losses on a fixed synthetic batch) and predicts in the documented
format: the full head matrix on a small timm model, and every task on LightZoo's emov2_1m and lwganet_l0.
Tiny inputs and narrow heads keep this fast."""

import math

import pytest
import torch

import zoo
import zoo.heads
from zoo.data.synthetic import synthetic_batch
from zoo.heads import TASK_HEADS

TIMM = "mobilenetv3_small_050"
# LWGANet's stride-3 blur pool needs at least 96 x 96 (it says so with an InputShapeError below that)
SIZES = {"lwganet_l0": 96}
STEPS = 4
# Adam from scratch on detection needs a gentler rate than the dense tasks; gradients clipped as mmdet does
LR = {"detection": 1e-3}
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

ALL = [(t, h) for t, heads in TASK_HEADS.items() for h in heads]
# every task on both of ours (the paper's RetinaNet and Semantic FPN on EMOv2); every head on the timm model
OURS = [("emov2_1m", "classification", "linear"), ("emov2_1m", "detection", "retinanet"),
        ("emov2_1m", "segmentation", "fpn"), ("emov2_1m", "change_detection", "siamese_fpn"),
        ("lwganet_l0", "classification", "linear"), ("lwganet_l0", "detection", "fcos"),
        ("lwganet_l0", "segmentation", "lraspp"), ("lwganet_l0", "change_detection", "siamese_fpn")]
CASES = [(TIMM, t, h) for t, h in ALL] + OURS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors gain nothing from intra-op threads, and two threads thrash badly on a shared, busy CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _build(backbone, task, head):
    if task == "classification":
        return zoo.heads.build_task_model(task, backbone, num_classes=N_CLS[task])
    kw = dict(HEAD_KW.get((task, head), {}))
    if task == "detection":
        size = SIZES.get(backbone, 64)
        kw.update(min_size=size, max_size=size)
    return zoo.create_model(backbone, task=task, head=head, num_classes=N_CLS[task], **kw)


def _call(model, task, batch, with_targets=True):
    t = batch["targets"] if with_targets else None
    if task == "change_detection":
        return model(batch["image_a"], batch["image_b"], *([t] if with_targets else []))
    if task == "classification" and not isinstance(model, zoo.heads.classification.ClassificationModel):
        return model(batch["images"])
    return model(batch["images"], t) if with_targets else model(batch["images"])


@pytest.mark.parametrize("backbone,task,head", CASES, ids=[f"{b}-{t}-{h}" for b, t, h in CASES])
def test_train_steps_reduce_loss_and_eval_output_format(backbone, task, head):
    size = SIZES.get(backbone, 64)
    model = _build(backbone, task, head)
    batch = synthetic_batch(task, batch_size=2, size=size, num_classes=N_CLS[task], seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=LR.get(task, 5e-3), weight_decay=0.0)
    model.train()
    totals = []
    for _ in range(STEPS):
        losses = _call(model, task, batch)
        assert isinstance(losses, dict) and losses, "train mode with targets must return a loss dict"
        total = sum(losses.values())
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], f"loss did not decrease over {STEPS} steps: {totals}"

    model.eval()
    with torch.no_grad():
        out = _call(model, task, batch, with_targets=False)
    n, c = 2, N_CLS[task]
    if task == "detection":
        assert isinstance(out, list) and len(out) == n
        for det in out:
            assert set(det) >= {"boxes", "labels", "scores"}
            k = len(det["scores"])
            assert det["boxes"].shape == (k, 4) and det["labels"].shape == (k,)
            assert det["labels"].dtype == torch.int64
            if k:
                assert 0 <= int(det["labels"].min()) and int(det["labels"].max()) < c
                assert float(det["boxes"].min()) >= 0 and float(det["boxes"].max()) <= size
                assert bool((det["boxes"][:, 2:] >= det["boxes"][:, :2]).all())
    elif task == "classification":
        assert out.shape == (n, c)
    else:
        assert out.shape == (n, c, size, size) and out.dtype == torch.float32
