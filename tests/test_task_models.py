"""The task-model contract: every registered head's model knows its task, head, input, data config, export adapter
and post-processing; one preprocessing serves ``zoo predict``, ``zoo eval`` and the export sidecar; the detector's
internal resize follows ``data.img_size`` in training, evaluation and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.heads import TaskModel, build_task_model, get_head, register_head, supported_heads, task_class
from zoo.heads.registry import _HEADS

TIMM = "mobilenetv3_small_050"
SMALL = {"fpn": dict(fpn_channels=16, channels=8), "retinanet": dict(fpn_channels=16), "fcos": dict(fpn_channels=32),
         "fasterrcnn": dict(fpn_channels=16), "ssdlite": dict(extra_channels=(32, 16, 16, 16)),
         "siamese_fpn": dict(fpn_channels=16), "lraspp": dict(inter_channels=8),
         "unet": dict(decoder_channels=(16, 8, 8, 8))}


@pytest.mark.parametrize("task,head", [(t, h) for t, hs in zoo.heads.TASK_HEADS.items() for h in hs if h != "native"])
def test_every_head_builds_a_task_model_that_describes_itself(task: str, head: str) -> None:
    model = build_task_model(task, TIMM, head=head, num_classes=3, **SMALL.get(head, {}))
    assert isinstance(model, TaskModel) and (model.task, model.head, model.head_name) == (task, head, head)
    assert task_class(model) is type(model) and get_head(task, head).build is not None
    cfg = model.data_config
    assert cfg["input_size"][0] == 3 and len(cfg["mean"]) == 3 and cfg["crop_mode"] in ("center", "squash")
    spec = model.input_spec((3, 64, 64), dynamic_batch=True)
    assert spec.input_names == type(model).input_names and spec.size == (64, 64)
    assert all(axes == {0: "batch"} for axes in spec.dynamic_axes.values())


def test_bare_modules_are_described_by_their_declared_task() -> None:
    classifier = zoo.create_model(TIMM, num_classes=4)  # the plain timm model, as timm users expect
    assert not isinstance(classifier, TaskModel) and task_class(classifier).task == "classification"
    unet = zoo.create_model("lightm_unet_2d", num_classes=2)  # a complete segmentation network
    assert task_class(unet).task == "segmentation"


def test_the_native_head_trains_a_complete_segmentation_network_and_only_that() -> None:
    import torch

    from zoo.errors import ConfigError
    from zoo.heads import supported_heads

    assert "native" in supported_heads("lightm_unet_2d")["segmentation"]
    assert "native" not in supported_heads(TIMM)["segmentation"]
    with pytest.raises(ConfigError, match="complete segmentation network"):
        zoo.create_model(TIMM, task="segmentation", head="native", num_classes=2)
    model = zoo.create_model("lightm_unet_2d", task="segmentation", head="native", num_classes=2)
    assert (model.task, model.head, task_class(model).task) == ("segmentation", "native", "segmentation")
    assert type(model.net).__name__ == "LightMUNet" and model.preferred_onnx_exporter == "legacy"
    x, y = torch.randn(2, 3, 32, 32), (torch.rand(2, 32, 32) > 0.5).long()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(3):
        loss = model.train()(x, y)["loss_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, 32, 32)


def test_a_head_registered_with_the_decorator_is_offered_everywhere() -> None:
    def build(backbone_name: str, **kwargs: object) -> TaskModel:
        return build_task_model("segmentation", backbone_name, head="fpn", **kwargs)

    register_head("segmentation", "fpn_copy", needs=(8, 16, 32))(build)
    try:
        assert "fpn_copy" in supported_heads(TIMM)["segmentation"]
        assert zoo.create_model(TIMM, task="segmentation", head="fpn_copy", num_classes=2, **SMALL["fpn"]).head == "fpn"
    finally:
        del _HEADS["segmentation"]["fpn_copy"]


def _checkpoint(model: torch.nn.Module, path: Path, meta: dict) -> Path:
    zoo.save_checkpoint(model, path, meta)
    return path


def test_detector_internal_size_follows_data_img_size_in_training_eval_and_export(tmp_path: Path) -> None:
    import zoo.export as export

    from zoo.config import load_config
    from zoo.data.build import DataBundle
    from zoo.tasks import get_task

    cfg = load_config({"task": "detection", "model": {"name": TIMM, "head": "retinanet",
                                                       "kwargs": {"fpn_channels": 16}},
                       "data": {"img_size": 64}})
    data = DataBundle([], [], num_classes=3, class_names=["a", "b", "c"])
    model = get_task("detection").build_model(cfg, data)  # what `zoo train` builds
    t = model.detector.transform
    assert t.min_size == (64,) and t.max_size == 64  # not torchvision's 800 x 1333
    meta = {"model": TIMM, "task": "detection", "head": "retinanet", "num_classes": 3, "in_chans": 3,
            "input_size": [3, 64, 64], "model_kwargs": {"fpn_channels": 16}}
    ckpt = _checkpoint(model, tmp_path / "det.safetensors", meta)
    loaded = zoo.create_model(checkpoint_path=ckpt)  # what `zoo eval`, `zoo predict` and `zoo export` load
    assert loaded.detector.transform.min_size == (64,) and loaded.detector.transform.max_size == 64
    result = export.export_model(str(ckpt), tmp_path / "out", exporter="legacy", n_random=1)
    side = json.loads(Path(str(result.onnx.path) + ".json").read_text())
    assert result.onnx.spec.input_size == (3, 64, 64) and side["postprocess"]["image_size"] == [64, 64]
    assert side["postprocess"]["matches_torch_transform"] is True


def test_predict_eval_and_the_exported_sidecar_recipe_agree_on_a_real_image(tmp_path: Path, monkeypatch) -> None:
    """One photo through `zoo predict` (probabilities), `zoo eval` (its input tensor) and onnxruntime fed by a
    re-implementation of the sidecar's recipe with PIL + numpy: all within 1e-4."""
    skdata = pytest.importorskip("skimage.data")
    import onnxruntime as ort
    import zoo.export as export
    from zoo.train.cli import main as train_main
    from zoo.train.engine import evaluate_checkpoint

    from zoo import tasks
    from zoo.predict import predict

    photo = Image.fromarray(skdata.astronaut()[40:400, 16:496])  # 480 x 360: not square, so the crop matters
    other = Image.fromarray(skdata.chelsea())
    root = tmp_path / "data"
    for split in ("train", "val"):
        for cls, im in (("a_astronaut", photo), ("b_cat", other)):
            (root / split / cls).mkdir(parents=True)
            im.save(root / split / cls / "x.png")
    run = tmp_path / "run"
    assert train_main(["--quiet", "model.name=test_efficientnet", "data.dataset=folder", f"data.root={root}",
                       "data.img_size=40", "data.batch_size=2", "train.epochs=1", "optim.lr=0.01",
                       f"out_dir={run}"]) == 0
    ckpt = run / "best.safetensors"
    image = root / "val" / "a_astronaut" / "x.png"

    probs = {t["class"]: t["prob"] for t in predict(ckpt, image, topk=2)[0]["topk"]}
    predicted = torch.tensor([probs["a_astronaut"], probs["b_cat"]])

    seen: list[torch.Tensor] = []
    original = tasks.ClassificationTask.predict

    def record(self, model, batch):  # the tensors `zoo eval` feeds the model
        seen.append(batch[0].detach().clone())
        return original(self, model, batch)

    monkeypatch.setattr(tasks.ClassificationTask, "predict", record)
    evaluate_checkpoint(ckpt, [f"data.root={root}"], device="cpu")
    eval_input = seen[0][0]  # ImageFolder order: a_astronaut first
    model = zoo.create_model(checkpoint_path=ckpt).eval()
    with torch.no_grad():
        eval_probs = model(eval_input[None]).softmax(-1)[0]
    torch.testing.assert_close(eval_probs, predicted, atol=1e-4, rtol=0)

    result = export.export_model(str(ckpt), tmp_path / "onnx", exporter="legacy", n_random=1)
    side = json.loads(Path(str(result.onnx.path) + ".json").read_text())
    pre = side["preprocessing"]
    c, h, w = side["input_size"]
    # the recipe as an app would write it, from the sidecar alone
    im = Image.open(image).convert("RGB")
    scale, _ = pre["recipe"]["scale_size"]
    assert pre["recipe"]["resize"] == "shorter side" and pre["interpolation"] == "bicubic"
    short, long_ = min(im.size), max(im.size)
    new_long = int(scale * long_ / short)
    size = (scale, new_long) if im.width <= im.height else (new_long, scale)
    im = im.resize(size, Image.Resampling.BICUBIC)
    left, top = int(round((im.width - w) / 2)), int(round((im.height - h) / 2))
    x = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.float32) / 255.0
    x = ((x - np.float32(pre["mean"])) / np.float32(pre["std"])).transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_allclose(x[0], eval_input.numpy(), atol=1e-4)
    (logits,) = ort.InferenceSession(str(result.onnx.path)).run(None, {"input": x})
    onnx_probs = torch.from_numpy(logits).softmax(-1)[0]
    torch.testing.assert_close(onnx_probs, predicted, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["retinanet", "fcos", "ssdlite"])
def test_detector_postprocess_of_its_export_adapter_equals_its_eval_forward(head: str) -> None:
    """``model.postprocess(model.export_adapter()(x))`` is what ``model(x)`` returns in eval mode (the graph + the
    head class's post-processing reproduce torchvision's path). FCOS's GroupNorm(32) needs 2 channels per group
    on its 1x1 P7 map."""
    torch.manual_seed(0)
    model = zoo.create_model(TIMM, task="detection", head=head, num_classes=3, min_size=64, max_size=64,
                             score_thresh=0.0, detections_per_img=5, topk_candidates=50,
                             **{**SMALL[head], **({"fpn_channels": 64} if head == "fcos" else {})}).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model([x[0]])[0]
        got = model.postprocess(model.export_adapter((3, 64, 64))(x), (3, 64, 64))[0]
    assert len(expected["boxes"]) == 5
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[k], expected[k], atol=1e-4, rtol=0)


@pytest.mark.parametrize("task,dataset,image_keys", [("segmentation", "seg_folder", {"image": "images"}),
                                                     ("change_detection", "levir_cd", {"image_a": "A",
                                                                                        "image_b": "B"})])
def test_dense_validation_sees_the_images_zoo_predict_and_the_sidecar_see(tmp_path: Path, task: str, dataset: str,
                                                                          image_keys: dict) -> None:
    """A 48x48 image validated at 40x40: the validation tensor is ``preprocess_file`` of the same file (the
    preprocessing ``zoo predict`` runs and the export sidecar describes), and the mask follows with nearest
    resampling, so it still holds only label values."""
    from zoo import tasks
    from zoo.config import load_config
    from zoo.data.synthetic import write_synthetic
    from zoo.data.transforms import preprocess_file

    root = write_synthetic(task, tmp_path / "data", n=4, size=48, num_classes=2)
    cfg = load_config({"task": task, "model": {"name": TIMM, "num_classes": 3 if task == "segmentation" else 2},
                       "data": {"dataset": dataset, "root": str(root), "img_size": 40}})
    data = tasks.get_task(task).build_data(cfg)
    sample = data.val[0]
    stem = sorted((root / "val" / next(iter(image_keys.values()))).iterdir())[0].name
    for key, folder in image_keys.items():
        expected = preprocess_file(root / "val" / folder / stem, data.data_config)
        assert sample[key].shape == (3, 40, 40)
        torch.testing.assert_close(sample[key], expected, rtol=0, atol=1e-6)
    assert sample["target"].shape == (40, 40) and set(sample["target"].unique().tolist()) <= {0, 1, 2}
