"""EMOv2 and LWGANet against their peers' contracts: torchvision FX feature extraction, timm's classifier-reset
contract, and the one export switch / weight-derived caches (tiny inputs)."""

from __future__ import annotations

import pytest
import torch
from timm.layers import set_exportable
from torchvision.models.feature_extraction import create_feature_extractor

import zoo
from zoo.backbones.emov2 import ConvNormAct
from zoo.errors import InputShapeError

CASES = [("emov2_1m", ["stage1", "stage2", "stage3", "stage4"], (1, 3, 64, 48)),
         ("lwganet_l0", ["stages.0", "stages.1", "stages.2", "stages.3"], (1, 3, 96, 128))]


@pytest.mark.parametrize("name,nodes,shape", CASES)
def test_torchvision_feature_extractor_equals_forward_intermediates(name, nodes, shape) -> None:
    m = zoo.create_model(name).eval()
    fx = create_feature_extractor(m, return_nodes={n: str(i) for i, n in enumerate(nodes)})
    x = torch.randn(*shape)
    with torch.no_grad():
        got = list(fx(x).values())
        ref = m.forward_intermediates(x, intermediates_only=True)
    assert len(got) == 4
    for g, r in zip(got, ref):
        assert torch.equal(g, r)
    with pytest.raises(InputShapeError):  # the input check stays in the traced graph
        fx(torch.randn(1, 1, *shape[2:]))


@pytest.mark.parametrize("name,nodes,shape", CASES)
@pytest.mark.parametrize("num_classes", [10, 3])
def test_reset_classifier_follows_timm_contract(name, nodes, shape, num_classes) -> None:
    m = zoo.create_model(name, num_classes=num_classes).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        assert m(x).shape == (1, num_classes)
        feats = m.forward_features(x)
        assert feats.ndim == 4 and feats.shape[1] == m.num_features
        m.reset_classifier(0)
        assert m(x).shape == (1, m.head_hidden_size)
        m.reset_classifier(0, "")
        out = m(x)
    assert out.ndim == 4 and out.shape[-2:] == feats.shape[-2:]


def test_emov2_fold_is_cached_and_follows_weight_changes() -> None:
    m = zoo.create_model("emov2_1m").eval()
    cna = next(c for c in m.modules() if isinstance(c, ConvNormAct) and isinstance(c.norm, torch.nn.BatchNorm2d))
    assert len(cna._fold_cache) == 1  # folded on eval()
    w1, _ = cna.folded_conv()
    assert cna.folded_conv()[0] is w1  # not recomputed
    x = torch.randn(1, 3, 32, 32)
    other = zoo.create_model("emov2_1m").eval()
    with torch.no_grad():
        other.stage0[0].norm.running_var.uniform_(0.5, 2.0)
        m.load_state_dict(other.state_dict())  # after eval(): the fold must follow
        assert cna.folded_conv()[0] is not w1
        assert torch.equal(m(x), other(x))
        with set_exportable(True):
            torch.testing.assert_close(m(x), other(x))
    m.train()
    assert len(cna._fold_cache) == 0
