"""The factory, the registry, checkpoint I/O and the CLI dispatcher: the contracts every family relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch

import zoo
from zoo.checkpoint import read_state_dict, save_checkpoint, unwrap_state_dict
from zoo.cli import main as zoo_main
from zoo.errors import CheckpointError, UnknownModelError, ZooError

SMALL = "resnet10t"


def test_unknown_model_suggests_close_registered_names() -> None:
    with pytest.raises(UnknownModelError) as err:
        zoo.create_model("emov2-5m")
    assert "did you mean 'emov2_5m'" in str(err.value)
    assert isinstance(err.value, KeyError)  # code written against timm's KeyError keeps working


def test_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(ZooError, match="classification, detection, segmentation, change_detection"):
        zoo.create_model(SMALL, task="keypoints")


def test_list_models_lists_ours_only_and_filters() -> None:
    ours = zoo.list_models()
    assert ours == sorted(ours) and "resnet50" not in ours
    assert set(zoo.list_models("emov2*")) >= {"emov2_1m", "emov2_2m", "emov2_5m", "emov2_20m"}
    assert all(n.startswith("emov2") for n in zoo.list_models("emov2*"))


def test_our_classifiers_are_visible_to_timm_and_lightm_unet_is_not() -> None:
    """Every LightZoo classifier is in timm's registry; LightM-UNet, a segmentation network, is not (see
    ``zoo.backbones.lightm_unet``), yet ``zoo.create_model`` builds it."""
    in_timm = zoo.registry.timm_registered_models()
    assert set(in_timm) == set(zoo.list_models()) - {"lightm_unet_2d", "lightm_unet_3d"}
    for name in zoo.list_models():
        assert timm.is_model(name) == (name in in_timm), name


def test_timm_models_pass_through_with_num_classes_and_in_chans() -> None:
    model = zoo.create_model(SMALL, num_classes=5, in_chans=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)


def _metadata(num_classes: int) -> dict:
    return {"model": SMALL, "task": "classification", "num_classes": num_classes, "in_chans": 3,
            "input_size": [3, 32, 32], "class_names": [str(i) for i in range(num_classes)]}


def test_our_checkpoint_round_trips_without_naming_the_model(tmp_path) -> None:
    source = timm.create_model(SMALL, num_classes=4).eval()
    path = save_checkpoint(source, tmp_path / "run" / "best.safetensors", _metadata(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.json", "best.safetensors"]  # no temp files left
    restored = zoo.create_model(checkpoint_path=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), source(x))
    assert zoo.read_metadata(path)["class_names"] == ["0", "1", "2", "3"]


def test_checkpoint_for_another_head_size_names_the_mismatch(tmp_path) -> None:
    path = save_checkpoint(timm.create_model(SMALL, num_classes=4), tmp_path / "a.safetensors", _metadata(4))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*fc\.weight"):
        zoo.create_model(SMALL, num_classes=9, checkpoint_path=path)


def test_checkpoint_for_another_model_lists_missing_and_unexpected_keys(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": timm.create_model("resnet18").state_dict()}, path)
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys|unexpected keys"):
        zoo.create_model("mobilenetv3_small_050", checkpoint_path=path)


@pytest.mark.parametrize("damage", ["truncate", "empty", "text"])
def test_damaged_checkpoints_give_a_checkpoint_error_naming_the_file(tmp_path, damage) -> None:
    good = tmp_path / "good.pth"
    torch.save(timm.create_model(SMALL).state_dict(), good)
    bad = tmp_path / f"{damage}.pth"
    data = good.read_bytes()
    bad.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint"}[damage])
    with pytest.raises(CheckpointError, match=bad.name):
        read_state_dict(bad)


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path) -> None:
    path = save_checkpoint(timm.create_model(SMALL), tmp_path / "m.safetensors", _metadata(1000))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        zoo.create_model(checkpoint_path=path)


def test_checkpoint_from_a_newer_format_version_is_refused(tmp_path) -> None:
    path = save_checkpoint(timm.create_model(SMALL), tmp_path / "m.safetensors", _metadata(1000))
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        zoo.create_model(checkpoint_path=path)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "net", "net_E", "network_weights", None])
def test_official_wrappers_and_dataparallel_prefix_are_unwrapped(wrapper) -> None:
    state = {"module.a": torch.ones(1), "module.b.c": torch.zeros(2)}
    obj = {wrapper: state, "epoch": 3} if wrapper else state
    assert set(unwrap_state_dict(obj)) == {"a", "b.c"}


def test_cli_unknown_command_and_unknown_model_exit_cleanly(capsys) -> None:
    assert zoo_main(["lsit"]) == 2
    assert "did you mean 'list'" in capsys.readouterr().err
    assert zoo_main(["info", "emov2-1m"]) == 1
    assert "did you mean 'emov2_1m'" in capsys.readouterr().err


def test_cli_list_and_info(capsys) -> None:
    assert zoo_main(["list", "emov2*"]) == 0
    assert "emov2_5m" in capsys.readouterr().out
    assert zoo_main(["info", "emov2_1m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 1_460_844
    assert info["feature_reductions"][-1] == 32
    assert info["pretrained_tags"] == ["in1k", "in1k_kd"]


def test_import_zoo_does_not_import_train_or_export() -> None:
    code = ("import sys, zoo; zoo.create_model('emov2_1m'); "
            "print(any(m.split('.')[0] in ('train', 'export') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_input_check_lets_shape_only_meta_runs_through() -> None:
    """The factory's input check must not read values of meta tensors (shape probes, MAC counting)."""
    with torch.device("meta"):
        model = zoo.create_model("lwganet_l0").eval()
    out = model(torch.zeros(1, 3, 96, 96, device="meta"))
    assert out.shape == (1, 1000) and out.is_meta
