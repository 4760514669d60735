"""Head structure (the papers' settings), the task-model contract, and the errors users get for wrong input."""

import importlib
import json
import sys

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

import zoo
import zoo.heads
import zoo.weights
from zoo.errors import ConfigError, DataError, InputShapeError
from zoo.heads import build_task_model, supported_heads

TIMM = "mobilenetv3_small_050"


def test_retinanet_on_emov2_uses_strides_8_to_128_with_p6_from_c5():
    m = zoo.create_model("emov2_1m", task="detection", num_classes=5, min_size=64, max_size=64)
    assert m.head_name == "retinanet"  # the default head
    fpn_backbone = m.detector.backbone
    assert fpn_backbone.body.reductions == [8, 16, 32]  # EMOv2 stages 2-4
    extra = fpn_backbone.fpn.extra_blocks
    assert extra.use_P5 is False and extra.p6.in_channels == fpn_backbone.body.channels[-1]  # 'on_input'
    assert fpn_backbone.out_channels == 256
    feats = fpn_backbone(torch.randn(1, 3, 128, 128))
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    assert [f.shape[-1] for f in feats.values()] == [16, 8, 4, 2, 1]  # strides 8 .. 128
    # 3 scales x 3 ratios per location, base size 4 x stride
    assert m.detector.anchor_generator.sizes[0] == (32, 40, 50)
    assert m.detector.anchor_generator.sizes[-1] == (512, 645, 812)
    assert m.detector.head.classification_head.num_classes == 5
    assert m.detector.transform.min_size == (64,) and m.detector.transform.max_size == 64


def test_norm_eval_freezes_backbone_batchnorm_only():
    m = zoo.create_model("emov2_1m", task="detection", num_classes=2, fpn_channels=16, norm_eval=True).train()
    bns = [x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.detector.head.training  # the head still trains normally


def test_ssdlite_reads_strides_16_and_32_plus_four_extra_levels():
    m = zoo.create_model(TIMM, task="detection", head="ssdlite", num_classes=3).eval()
    bb = m.detector.backbone
    assert bb.body.reductions == [16, 32]
    x = torch.randn(1, 3, 320, 320)
    feats = list(bb(x).values())
    assert [f.shape[-1] for f in feats] == [20, 10, 5, 3, 2, 1]
    # EMOv2's SSDLite boxes: 48 px square, then sqrt(48 * 100) px, then ratios 2 and 3, centred at stride 16 / 2
    anchors = m.detector.anchor_generator(ImageList(x, [(320, 320)]), feats)[0]
    wh = anchors[:6, 2:] - anchors[:6, :2]
    assert torch.allclose(anchors[0], torch.tensor([-16.0, -16.0, 32.0, 32.0]))
    assert torch.allclose(wh[1], torch.full((2,), (48 * 100) ** 0.5), atol=1e-3)
    assert torch.allclose(wh[2], torch.tensor([48 * 2**0.5, 48 / 2**0.5]), atol=1e-3)
    assert anchors.shape == (6 * (400 + 100 + 25 + 9 + 4 + 1), 4)
    assert m.detector.anchor_generator.num_anchors_per_location() == [6] * 6
    assert m.detector.transform.fixed_size == (320, 320)  # SSDLite's default 320 x 320 input
    assert m.detector.head.classification_head.num_columns == 4  # 3 classes + background, hidden from users


def test_fasterrcnn_hides_the_background_class():
    m = zoo.create_model(TIMM, task="detection", head="fasterrcnn", num_classes=3, fpn_channels=32)
    assert m.detector.roi_heads.box_predictor.cls_score.out_features == 4
    assert m.label_offset == 1
    assert m.backbone.reductions == [4, 8, 16, 32]


def test_unknown_head_and_task_list_the_choices():
    with pytest.raises(ConfigError, match="retinanet, fcos, ssdlite, fasterrcnn"):
        build_task_model("detection", TIMM, head="yolo")
    with pytest.raises(ConfigError, match="unknown task"):
        build_task_model("depth", TIMM)


def test_detection_needs_targets_in_train_mode_and_checks_them():
    m = zoo.create_model(TIMM, task="detection", num_classes=2, fpn_channels=16, min_size=64, max_size=64).train()
    img = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match="needs targets"):
        m(img)
    with pytest.raises(DataError, match="outside"):
        m(img, [{"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([2])}])
    with pytest.raises(DataError, match="degenerate"):
        m(img, [{"boxes": torch.tensor([[20.0, 1, 10, 20]]), "labels": torch.tensor([0])}])
    with pytest.raises(InputShapeError):
        m(torch.rand(3, 64, 64))


def test_segmentation_checks_masks_and_keeps_odd_input_sizes():
    m = zoo.create_model(TIMM, task="segmentation", num_classes=3, fpn_channels=16, channels=8)
    m.train()
    x = torch.randn(2, 3, 70, 50)
    with pytest.raises(DataError, match="outside"):
        m(x, torch.full((2, 70, 50), 3))
    with pytest.raises(InputShapeError, match="masks"):
        m(x, torch.zeros(2, 64, 64, dtype=torch.long))
    # ignore_index pixels carry no loss: an all-ignored mask plus one labelled pixel is finite
    t = torch.full((2, 70, 50), 255)
    t[0, 0, 0] = 1
    assert torch.isfinite(m(x, t)["loss_seg"])
    m.eval()
    assert m(x).shape == (2, 3, 70, 50)  # logits at the input resolution even when not a multiple of 32


def test_change_model_takes_two_images_and_rejects_a_six_channel_stack():
    m = zoo.create_model(TIMM, task="change_detection", fpn_channels=16).eval()
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with pytest.raises(InputShapeError, match=r"torch.chunk\(x, 2, dim=1\)"):
        m(torch.cat([a, b], dim=1))
    with pytest.raises(InputShapeError, match="equal in shape"):
        m(a, torch.randn(1, 3, 32, 32))
    out = m(a, b)
    assert out.shape == (1, 2, 64, 64)
    # |f_A - f_B| makes the change map symmetric in the two dates
    assert torch.allclose(out, m(b, a), atol=1e-5)
    assert m.head_name == "siamese_fpn" and m.backbone.reductions == [4, 8, 16, 32]


def test_change_deep_supervision_adds_an_aux_loss():
    m = zoo.create_model(TIMM, task="change_detection", fpn_channels=16, deep_supervision=True).train()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    losses = m(a, b, torch.randint(0, 2, (2, 64, 64)))
    assert set(losses) == {"loss_change", "loss_aux"}
    assert len(m.aux_classifiers) == 3  # one per coarser fused level


def _decoder_heads() -> dict[str, list[str]]:
    """Every registered head except ``native`` (a head for complete segmentation networks, not backbones)."""
    return {k: [h for h in v if h != "native"] for k, v in zoo.heads.TASK_HEADS.items()}


def test_supported_heads_follow_the_feature_strides():
    assert supported_heads(TIMM) == _decoder_heads()
    assert "native" in zoo.heads.TASK_HEADS["segmentation"]
    # a plain ViT has only stride-16 maps: no FPN-based head fits, ASPP on the last map does
    assert supported_heads("test_vit") == {"classification": ["linear"], "segmentation": ["deeplabv3"]}


def test_zoo_info_lists_heads():
    from zoo.info import format_info

    info = zoo.model_info("emov2_1m", macs=False)
    assert info["heads"]["detection"] == ["retinanet", "fcos", "ssdlite", "fasterrcnn"]
    assert info["heads"]["change_detection"] == ["siamese_fpn"]
    # the line `zoo info emov2_1m` prints
    line = ("  heads:              classification: linear; detection: retinanet, fcos, ssdlite, fasterrcnn; "
            "segmentation: fpn, deeplabv3, lraspp, unet; change_detection: siamese_fpn")
    assert line in format_info(info).splitlines()
    assert zoo.model_info("lwganet_l0", macs=False)["heads"] == _decoder_heads()


def test_pretrained_backbone_weights_reach_the_feature_extractor(tmp_path, monkeypatch):
    # stand-in release in the official layout, served by the manifest from a file:// URL: every tensor recognisable
    ref = zoo.create_model("emov2_1m")
    with torch.no_grad():
        for i, t in enumerate(ref.state_dict().values()):
            if t.is_floating_point():
                t.fill_(float(i))
    release = tmp_path / "EMOv2_1M_224.pth"
    torch.save({"net": ref.state_dict()}, release)
    entry = {**zoo.weights.find_entry("emov2_1m", "in1k"), "url": release.as_uri(),
             "sha256": zoo.weights.sha256_of(release), "verified_by": "sha256", "git_blob": None}
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "entries": [entry]}))
    monkeypatch.setenv("ZOO_MANIFEST", str(tmp_path / "manifest.json"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    m = zoo.create_model("emov2_1m", task="segmentation", pretrained=True, num_classes=3, fpn_channels=16)
    stem = "stage0.0.conv.weight"
    assert torch.equal(m.backbone.body.state_dict()["model." + stem], ref.state_dict()[stem])


def test_change_model_supports_semantic_change_classes():
    m = zoo.create_model(TIMM, task="change_detection", num_classes=4, fpn_channels=16).train()
    a, b = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    assert torch.isfinite(m(a, b, torch.randint(0, 4, (2, 64, 64)))["loss_change"])
    assert m.eval()(a, b).shape == (2, 4, 64, 64)
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        zoo.create_model(TIMM, task="change_detection", num_classes=1)


def test_deeplabv3_trains_with_the_auxiliary_head_of_the_emov2_config():
    m = zoo.create_model("emov2_1m", task="segmentation", head="deeplabv3", num_classes=3).train()
    assert m.backbone.reductions[-2:] == [16, 32]
    assert m.aux_head.block[0][0].in_channels == 80  # EMOv2-1M stage 3, as auxiliary_head in_channels=80
    losses = m(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    assert set(losses) == {"loss_seg", "loss_aux"}
    no_aux = zoo.create_model("emov2_1m", task="segmentation", head="deeplabv3", num_classes=3, aux=False)
    assert no_aux.aux_head is None


def test_mmdet_integration_without_mmdet_names_the_headless_safe_install(monkeypatch):
    # as on a machine without the extra: the import error must say how to install without breaking cv2
    monkeypatch.setitem(sys.modules, "mmdet", None)
    monkeypatch.setitem(sys.modules, "mmdet.registry", None)
    monkeypatch.delitem(sys.modules, "zoo.integrations.mmdet", raising=False)
    with pytest.raises(ImportError, match=r"lightzoo\[mmdet\]' && pip install --no-deps 'mmengine"):
        importlib.import_module("zoo.integrations.mmdet")
