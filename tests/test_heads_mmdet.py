"""LightZoo backbones registered into mmdetection's MODELS registry (needs the ``mmdet`` extra)."""

import importlib.util

import pytest
import torch

# the extra plus `pip install --no-deps mmengine mmcv-lite` (README, tasks section: keeps the headless OpenCV)
pytest.importorskip("mmdet.registry", reason="mmdet/mmengine not installed (README: the two-step mmdet install)")
pytest.importorskip("mmengine.model", reason="mmengine not installed (README: the two-step mmdet install)")

from mmdet.registry import MODELS  # noqa: E402

import zoo  # noqa: E402
import zoo.integrations.mmdet as zm  # noqa: E402


@pytest.fixture
def registry(monkeypatch):
    if importlib.util.find_spec("mmcv._ext") is None:
        # mmcv-lite has no compiled ops, so mmdet's own modules cannot load; MODELS.get would try to import them
        # on first use. Mark them as imported: this test is about our registration, not about mmdet's models.
        monkeypatch.setattr(MODELS, "_imported", True)
    return MODELS


def test_every_lightzoo_model_is_registered():
    assert set(zoo.list_models()) <= set(MODELS.module_dict)
    assert "LightZooBackbone" in MODELS.module_dict
    assert zm.REGISTERED[0] == "LightZooBackbone"


def test_build_returns_the_multiscale_tuple_mmdet_necks_expect(registry):
    b = registry.build(dict(type="emov2_1m", out_indices=(1, 2, 3)))
    feats = b(torch.randn(1, 3, 64, 64))
    assert isinstance(feats, tuple) and [f.shape[1] for f in feats] == b.channels == [48, 80, 180]
    assert [f.shape[-1] for f in feats] == [8, 4, 2] and b.reductions == [8, 16, 32]


def test_generic_backbone_with_norm_eval(registry):
    b = registry.build(dict(type="LightZooBackbone", model_name="mobilenetv3_small_050", norm_eval=True)).train()
    assert not any(m.training for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert len(b(torch.randn(2, 3, 64, 64))) == len(b.channels)
    with pytest.raises(zoo.ZooError, match="fixes model_name"):
        registry.build(dict(type="emov2_1m", model_name="lwganet_l0"))
