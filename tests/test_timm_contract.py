"""timm's and torchvision's contracts, for every LightZoo model (parametrised over ``zoo.list_models()``, so a new
family is covered the moment it registers).

timm's own ``tests/test_models.py`` runs over the timm-registered names in CI (``.ci/timm_suite.sh``); these tests
pin the parts of that contract users hit first, at tiny sizes: ``reset_classifier(0, '')`` gives the unpooled map,
any ``num_classes`` works, torchvision's ``create_feature_extractor`` (torch.fx) traces every backbone and its maps
equal ``forward_intermediates``. LightM-UNet is a segmentation network and is kept out of timm's classifier
registry (see ``zoo.backbones.lightm_unet``); its own checks are at the end.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import zoo
from zoo.errors import InputShapeError

CLASSIFIERS = zoo.registry.timm_registered_models()
SEGMENTERS = [n for n in zoo.list_models() if n not in CLASSIFIERS]


def _input(model: torch.nn.Module, size: int = 64) -> torch.Tensor:
    """A tiny input: ``size``, or the model's ``min_input_size`` when larger; 8^3 for a volumetric model."""
    if getattr(model, "spatial_dims", 2) == 3:
        return torch.randn(1, model.in_chans, 8, 8, 8)
    min_size = (model.pretrained_cfg.get("min_input_size") or (0, 0, 0))[-1]
    return torch.randn(1, model.in_chans, max(size, min_size), max(size, min_size))


def test_every_family_is_covered() -> None:
    families = {zoo.registry.model_family(n) for n in CLASSIFIERS}
    assert {"emov2", "lwganet", "phnn", "ulsam_mobilenet"} <= families, families
    assert SEGMENTERS == ["lightm_unet_2d", "lightm_unet_3d"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_reset_classifier_without_pool_returns_the_unpooled_feature_map(name: str) -> None:
    model = timm.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        out = model(x)
    assert out.ndim == 4 and out.shape[2:] == feats.shape[2:]
    if out.shape[1] == model.num_features:
        torch.testing.assert_close(out, feats)
    else:  # a 1x1 head conv after the pool (LWGANet, like timm's MobileNetV3) still runs, on the unpooled map
        assert out.shape[1] == model.head_hidden_size != model.num_features


@pytest.mark.parametrize("num_classes", [10, 42])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_any_num_classes_builds_a_working_classifier(name: str, num_classes: int) -> None:
    model = zoo.create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(_input(model, 32)).shape == (1, num_classes)


def _stage_nodes(model: torch.nn.Module) -> list[str]:
    return [info["module"] for info in model.feature_info]


@pytest.mark.parametrize("name", [*CLASSIFIERS, *SEGMENTERS])
def test_torchvision_feature_extractor_equals_forward_intermediates(name: str) -> None:
    """Plain ``torchvision.models.feature_extraction.create_feature_extractor`` (no tracer arguments): the input
    checks and loops over sequences are FX leaves, so the whole network traces."""
    model = zoo.create_model(name).eval()
    nodes = _stage_nodes(model)
    extractor = create_feature_extractor(model, return_nodes={n: n for n in nodes})
    x = _input(model)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        got = extractor(x)
    assert list(got) == nodes and len(expected) == len(nodes)
    for node, ref in zip(nodes, expected):
        torch.testing.assert_close(got[node], ref, rtol=1e-5, atol=1e-5, msg=f"{name} {node}")


@pytest.mark.parametrize("name", ["phc_resnet18", "mobilenetv2_ulsam", "lightm_unet_2d"])
def test_traced_graph_keeps_the_clear_input_error(name: str) -> None:
    model = zoo.create_model(name).eval()
    graph = create_feature_extractor(model, return_nodes={_stage_nodes(model)[-1]: "out"})
    with pytest.raises(InputShapeError, match=r"\(B, (3|C), H, W\)"):
        graph(torch.randn(1, 2, 32, 32))


# --- LightM-UNet: a segmentation network, not in timm's classifier registry ----------------------------------------

def test_lightm_unet_is_a_zoo_model_outside_timms_classifier_registry() -> None:
    for name in SEGMENTERS:
        assert name in zoo.list_models() and not timm.is_model(name)
        assert zoo.registry.model_family(name) == "lightm_unet"
    model = zoo.create_model("lightm_unet_2d", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)  # a mask, not pooled logits
    cfg = zoo.registry.get_pretrained_cfg("lightm_unet_2d.untrained")
    assert cfg.input_size == (3, 256, 256) and model.pretrained_cfg["tag"] == "untrained"


def test_lightm_unet_3d_cfg_has_a_volume_input_size() -> None:
    model = zoo.create_model("lightm_unet_3d")
    assert model.pretrained_cfg["input_size"] == (1, 64, 64, 64) == zoo.registry.get_pretrained_cfg(
        "lightm_unet_3d").input_size
    assert zoo.create_model("lightm_unet_3d", features_only=True).pretrained_cfg["input_size"] == (1, 64, 64, 64)


def test_lightm_unet_is_still_a_backbone_for_zoos_segmentation_heads() -> None:
    seg = zoo.create_model("lightm_unet_2d", task="segmentation", head="unet", num_classes=2).eval()
    with torch.no_grad():
        out = seg(torch.randn(1, 3, 32, 32))
    logits = out["out"] if isinstance(out, dict) else out
    assert logits.shape == (1, 2, 32, 32)
