"""Parameter-efficient fine-tuning (``train.peft``, ``zoo.peft``): parameter counts per family, merge equivalence,
adapter checkpoints through ``zoo eval``, exact resume, and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from zoo.train.engine import STATE_FILE, evaluate_checkpoint, fit, load_train_state

import zoo
from zoo.errors import CheckpointError, ConfigError
from zoo.peft import apply_peft, merge_lora, parameter_counts

TINY = ["model.name=test_efficientnet", "data.dataset=synthetic", "data.img_size=16", "data.batch_size=8",
        "data.synth={num_images: 40, num_classes: 4}", "train.epochs=2", "train.progress=false",
        "sched.warmup_epochs=1", "optim.lr=0.01"]
LORA = ["train.peft.method=lora", "train.peft.rank=4"]

# (family, input size): one model of every LightZoo family (PHNN's PH layers are materialised first)
FAMILIES = [("emov2_1m", 32), ("lwganet_l0", 96), ("mobilenetv2_ulsam", 32), ("mobilenetv1_ulsam", 32),
            ("phc_resnet18", 32), ("lightm_unet_2d", 32)]


def _expected_lora_params(model: nn.Module, rank: int) -> int:
    """r * (fan_in + out) for every dense nn.Linear / nn.Conv2d outside the classifier, counted independently."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(m) for m in head.modules()} if isinstance(head, nn.Module) else set()
    total = 0
    for m in model.modules():
        if id(m) in head_ids:
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            total += rank * (m.weight[0].numel() + m.weight.shape[0])
    return total


@pytest.mark.parametrize("name, size", FAMILIES)
def test_lora_trainable_parameter_count_per_family(name: str, size: int) -> None:
    kwargs = {} if name.startswith("lightm") else {"num_classes": 4}
    model = zoo.create_model(name, **kwargs).eval()
    from zoo.layers.hypercomplex import materialize_ph_layers

    reference = materialize_ph_layers(zoo.create_model(name, **kwargs))
    classifier = reference.get_classifier() if hasattr(reference, "get_classifier") else None
    head = sum(p.numel() for p in classifier.parameters()) if isinstance(classifier, nn.Module) else 0
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = model(x)
    spec = apply_peft(model, "lora", rank=4)
    counts = parameter_counts(model)
    assert counts["trainable"] == _expected_lora_params(reference, 4) + head
    assert spec["targets"] and counts["trainable_fraction"] < 0.15
    with torch.no_grad():  # B starts at zero: the adapted model computes the base model
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, size", [("emov2_1m", 32), ("lwganet_l0", 96), ("phc_resnet18", 32)])
def test_merged_lora_matches_unmerged_and_is_a_plain_model(name: str, size: int) -> None:
    model = zoo.create_model(name, num_classes=4).eval()
    apply_peft(model, "lora", rank=4)
    for n, p in model.named_parameters():
        if n.endswith("lora_B"):
            nn.init.normal_(p, std=0.05)  # a trained-looking update
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        unmerged = model(x)
        merged_model = merge_lora(model)
        merged = merged_model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not any("lora" in k or "parametrizations" in k for k in merged_model.state_dict())
    assert not hasattr(merged_model, "zoo_peft")


def test_adapter_checkpoint_exports_merged_with_no_extra_ops(lora_run: dict, base_ckpt: Path,
                                                              tmp_path: Path) -> None:
    """``zoo export`` of an adapter checkpoint: the same ONNX ops as the plain base model, outputs as unmerged."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from collections import Counter

    import zoo.export as export

    def ops(path: Path) -> Counter:
        return Counter(n.op_type for n in onnx.load(str(path)).graph.node)

    adapted = export.export_model(lora_run["result"]["last_checkpoint"], tmp_path / "a", log=lambda m: None)
    plain = export.export_model(str(base_ckpt), tmp_path / "p", log=lambda m: None)
    assert ops(adapted.onnx.path) == ops(plain.onnx.path)
    import onnxruntime as ort

    x = torch.randn(1, 3, 16, 16)
    unmerged = zoo.create_model(checkpoint_path=lora_run["result"]["last_checkpoint"]).eval()
    sess = ort.InferenceSession(str(adapted.onnx.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), unmerged(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["segmentation", "change_detection", "detection"])
def test_lora_lives_in_the_backbone_of_task_models(task: str) -> None:
    model = zoo.create_model("test_efficientnet", task=task, num_classes=2)
    spec = apply_peft(model, "lora", rank=2, train_head=False)
    backbone = model.backbone
    lora_in_backbone = sum(p.numel() for n, p in backbone.named_parameters() if "lora_" in n)
    assert lora_in_backbone == parameter_counts(model)["trainable"] > 0  # head frozen: only the backbone's LoRA
    assert all(".backbone." in f".{t}" or t.startswith("backbone.") for t in spec["targets"])


def test_change_detection_dates_share_the_adapted_encoder() -> None:
    model = zoo.create_model("test_efficientnet", task="change_detection", num_classes=2).eval()
    apply_peft(model, "lora", rank=2)
    for n, p in model.named_parameters():
        if n.endswith("lora_B"):
            nn.init.normal_(p, std=0.05)
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # one encoder: swapping the dates gives the same |difference| features
        torch.testing.assert_close(model(a, b), model(b, a), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain checkpoint of the base model (what a user fine-tunes from)."""
    out = tmp_path_factory.mktemp("base")
    r = fit(None, TINY + [f"out_dir={out}", "train.epochs=1"], quiet=True)
    return Path(r["best_checkpoint"])


@pytest.fixture(scope="module")
def lora_run(base_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("lora")
    r = fit(None, TINY + LORA + [f"model.checkpoint={base_ckpt}", f"out_dir={out}", "train.save_every=0"],
            quiet=True)
    return {"result": r, "weights": {k: v.clone() for k, v in r["model"].state_dict().items()}, "out": out}


def test_adapter_checkpoint_round_trips_through_zoo_eval(lora_run: dict, base_ckpt: Path) -> None:
    r = lora_run["result"]
    meta = zoo.read_metadata(r["best_checkpoint"])
    assert meta["peft"]["method"] == "lora" and meta["peft"]["base"]["checkpoint"] == str(base_ckpt)
    assert meta["params"]["trainable"] == r["params"]["trainable"] < r["params"]["total"]
    saved = zoo.checkpoint.read_state_dict(r["best_checkpoint"])
    assert len(saved) < len(r["model"].state_dict())  # the frozen base stays out of the file
    again = evaluate_checkpoint(r["best_checkpoint"], device="cpu")
    assert again["top1"] == meta["metrics"]["top1"]
    model = zoo.create_model(checkpoint_path=r["last_checkpoint"]).eval()
    live = r["model"].eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), live(x))


def test_adapter_checkpoint_refuses_another_base(lora_run: dict, base_ckpt: Path, tmp_path: Path) -> None:
    import json
    import shutil

    r = lora_run["result"]
    ckpt = tmp_path / "a.safetensors"
    shutil.copy(r["last_checkpoint"], ckpt)
    meta = json.loads(Path(r["last_checkpoint"]).with_suffix(".json").read_text())
    meta["peft"]["base"]["sha256"] = "0" * 64
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.create_model(checkpoint_path=ckpt)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_resume_with_peft_is_bit_identical(lora_run: dict, base_ckpt: Path, tmp_path: Path, method: str) -> None:
    args = TINY + [f"train.peft.method={method}", "train.peft.rank=4", f"model.checkpoint={base_ckpt}",
                   "train.save_every=0", "train.ema=true"]
    full = fit(None, args + [f"out_dir={tmp_path / 'full'}"], quiet=True)
    part = tmp_path / "part"
    r1 = fit(None, args + [f"out_dir={part}", "train.stop_at_step=3"], quiet=True)
    assert r1["interrupted"]
    r2 = fit(None, ["train.stop_at_step=null"], resume=part, quiet=True)
    a, b = full["model"].state_dict(), r2["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = (load_train_state(d / STATE_FILE)["ema"] for d in (tmp_path / "full", part))
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)


def test_base_weights_stay_frozen(lora_run: dict, base_ckpt: Path) -> None:
    base = zoo.checkpoint.read_state_dict(base_ckpt)
    trained = lora_run["weights"]
    for k, v in base.items():
        if k.startswith("classifier."):
            continue
        key = k if k in trained else k.replace(".weight", ".parametrizations.weight.original")
        if key in trained and not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(trained[key], v), k


def test_bad_peft_settings_are_one_line_config_errors(base_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.peft.target \['\*nothing\*'\] matches no") as e:
        fit(None, TINY + LORA + ["train.peft.target=['*nothing*']", f"out_dir={tmp_path}"], quiet=True)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="must be one of none, lora, adapter"):
        fit(None, TINY + ["train.peft.method=lorra"], quiet=True)
    with pytest.raises(ConfigError, match="dropout"):
        fit(None, TINY + LORA + ["train.peft.dropout=0.1", f"out_dir={tmp_path}"], quiet=True)


def test_dinov2_vit_is_a_change_detection_encoder_with_lora(tmp_path: Path) -> None:
    """PeftCD's setting: a foundation ViT (DINOv2 layout, random weights, 4 blocks to stay small) as the shared
    siamese encoder, its last blocks resampled to strides 8/16/32, LoRA on the attention projections."""
    vit = {"backbone_kwargs": {"img_size": 56, "depth": 4}}
    r = fit(None, ["task=change_detection", "model.name=vit_small_patch14_dinov2", f"model.kwargs={vit}",
                   "data.dataset=synthetic", "data.img_size=56", "data.batch_size=4",
                   "data.synth={num_images: 8, num_classes: 2}", "train.epochs=1", "train.progress=false",
                   "train.peft.method=lora", "train.peft.target=['*attn.qkv', '*attn.proj']", f"out_dir={tmp_path}"],
            quiet=True)
    model = r["model"].eval()
    assert model.backbone.reductions == [8, 16, 32]
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 2 * 4 and all(n.startswith("backbone.body.model.blocks.") for n in lora)
    assert r["params"]["trainable_fraction"] < 0.5 and 0.0 <= r["best"] <= 1.0
    again = zoo.create_model(checkpoint_path=r["last_checkpoint"]).eval()
    a, b = torch.randn(1, 3, 56, 56), torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(again(a, b), model(a, b))
        torch.testing.assert_close(model(a, b), model(b, a))  # both dates through the one adapted encoder


def test_adapter_checkpoint_predicts(lora_run: dict, tmp_path: Path) -> None:
    from PIL import Image

    from zoo.predict import predict

    img = tmp_path / "x.png"
    Image.fromarray((torch.rand(16, 16, 3) * 255).byte().numpy()).save(img)
    res = predict(lora_run["result"]["last_checkpoint"], img, topk=4)
    assert len(res) == 1 and abs(sum(t["prob"] for t in res[0]["topk"]) - 1.0) < 1e-4


@pytest.mark.parametrize("name, size", [("emov2_1m", 32), ("mobilenetv2_ulsam", 32)])
def test_adapter_parameter_count_and_identity_start(name: str, size: int) -> None:
    model = zoo.create_model(name, num_classes=4).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = model(x)
    channels = [f["num_chs"] for f in model.feature_info]
    head = sum(p.numel() for p in model.get_classifier().parameters())
    apply_peft(model, "adapter", rank=8)
    # per stage: down (C*r + r) and up (r*C + C)
    assert parameter_counts(model)["trainable"] == sum(2 * c * 8 + 8 + c for c in channels) + head
    with torch.no_grad():
        assert torch.equal(model(x), before)  # ``up`` starts at zero
