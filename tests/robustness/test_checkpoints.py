"""Bad checkpoints, training states and manifest entries: each is a ``CheckpointError`` / ``WeightsError`` naming
the file (and the keys, shapes, versions or hashes at fault). A pickle that would run code is refused and the
command in it never runs (the marker file it would create must not exist)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from zoo.train.engine import load_train_state

import zoo
from zoo import weights
from zoo.cli import main as zoo_main
from zoo.errors import CheckpointError, UnknownModelError, WeightsError

NAME = "test_efficientnet"  # timm's ~100k-parameter test network: the failure modes do not depend on size


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One of our checkpoints (safetensors + sidecar) of a 4-class model."""
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    zoo.save_checkpoint(zoo.create_model(NAME, num_classes=4), path, {"model": NAME, "num_classes": 4})
    return path


def _copy(saved: Path, tmp_path: Path, cut: bool = False, meta: dict | None = None) -> Path:
    dst = tmp_path / "copy.safetensors"
    data = saved.read_bytes()
    dst.write_bytes(data[: len(data) // 2] if cut else data)
    side = json.loads(saved.with_suffix(".json").read_text())
    dst.with_suffix(".json").write_text(json.dumps({**side, **(meta or {})}))
    return dst


def _pth(tmp_path: Path, obj: object, name: str = "official.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _state(num_classes: int = 4, name: str = NAME) -> dict[str, torch.Tensor]:
    return dict(zoo.create_model(name, num_classes=num_classes).state_dict())


def test_truncated_and_empty_files(saved: Path, tmp_path: Path) -> None:
    cut = _copy(saved, tmp_path, cut=True)
    with pytest.raises(CheckpointError, match=rf"checkpoint '{cut}' is not a readable safetensors file"):
        zoo.create_model(checkpoint_path=cut)
    good = _pth(tmp_path, _state())
    half = tmp_path / "half.pth"
    half.write_bytes(good.read_bytes()[:5000])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (half, empty):
        with pytest.raises(CheckpointError, match=rf"checkpoint '{path}' is truncated or not a PyTorch checkpoint"):
            zoo.create_model(NAME, num_classes=4, checkpoint_path=path)
    with pytest.raises(CheckpointError, match=rf"checkpoint file '{tmp_path / 'gone.pth'}' does not exist"):
        zoo.create_model(NAME, checkpoint_path=tmp_path / "gone.pth")


def test_a_checkpoint_for_another_model(tmp_path: Path) -> None:
    path = _pth(tmp_path, _state(name="test_resnet"))
    with pytest.raises(CheckpointError) as e:
        zoo.create_model(NAME, num_classes=4, checkpoint_path=path)
    msg = str(e.value)
    assert f"checkpoint '{path}' does not fit EfficientNet" in msg and "missing keys (e.g. conv_stem.weight" in msg
    assert "unexpected keys" in msg and "Is it a checkpoint for another model or another num_classes?" in msg


def test_missing_extra_and_mismatched_keys(tmp_path: Path) -> None:
    state = _state()
    missing = {k: v for k, v in state.items() if k != "bn2.weight"}
    with pytest.raises(CheckpointError, match=r"missing.pth' does not fit EfficientNet: 1 missing keys \(e.g. bn2.w"):
        zoo.create_model(NAME, num_classes=4, checkpoint_path=_pth(tmp_path, missing, "missing.pth"))
    extra = {**state, "aux.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"extra.pth' does not fit EfficientNet: 1 unexpected keys \(e.g. aux.w"):
        zoo.create_model(NAME, num_classes=4, checkpoint_path=_pth(tmp_path, extra, "extra.pth"))
    with pytest.raises(CheckpointError, match=r"classifier.weight: file \(4, \d+\) vs model \(7, \d+\)"):
        zoo.create_model(NAME, num_classes=7, checkpoint_path=_pth(tmp_path, state, "classes.pth"))
    with pytest.raises(CheckpointError, match=r"notensors.pth'.*no state_dict found|contains no tensors"):
        zoo.create_model(NAME, checkpoint_path=_pth(tmp_path, {"epoch": 3, "arch": "x"}, "notensors.pth"))


def test_sidecars_newer_broken_or_naming_an_unknown_model(saved: Path, tmp_path: Path) -> None:
    newer = _copy(saved, tmp_path, meta={"format_version": 99})
    with pytest.raises(CheckpointError, match=rf"checkpoint '{newer}' has format_version 99, newer than this LightZoo"):
        zoo.create_model(checkpoint_path=newer)
    newer.with_suffix(".json").write_text("{broken")
    with pytest.raises(CheckpointError, match=rf"checkpoint metadata '{newer.with_suffix('.json')}' is not valid JSON"):
        zoo.create_model(checkpoint_path=newer)
    renamed = _copy(saved, tmp_path, meta={"model": "efficientnet_tset"})
    with pytest.raises(UnknownModelError, match="efficientnet_tset"):
        zoo.create_model(checkpoint_path=renamed)
    with pytest.raises(CheckpointError, match=r"our checkpoints are .safetensors files; got '.*model.pt'"):
        zoo.save_checkpoint(_state(), tmp_path / "model.pt")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickles_that_would_run_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _pth(tmp_path, {"state_dict": _state(), "hook": _RunsCode(marker)}, "evil.pth")
    with pytest.raises(CheckpointError, match=rf"checkpoint '{evil}' contains Python objects that would execute code"):
        zoo.create_model(NAME, num_classes=4, checkpoint_path=evil)
    state = _pth(tmp_path, {"format": "lightzoo-train-state", "version": 1, "x": _RunsCode(marker)}, "state.pt")
    with pytest.raises(CheckpointError, match=rf"training state '{state}' contains Python objects that would execute"):
        load_train_state(state)
    assert not marker.exists()


def test_training_states_newer_or_incomplete(tmp_path: Path) -> None:
    newer = _pth(tmp_path, {"format": "lightzoo-train-state", "version": 9}, "newer.pt")
    with pytest.raises(CheckpointError, match=rf"training state '{newer}' has version 9, newer than this LightZoo"):
        load_train_state(newer)
    partial = _pth(tmp_path, {"format": "lightzoo-train-state", "version": 1, "model": {}}, "partial.pt")
    with pytest.raises(CheckpointError, match=rf"training state '{partial}' lacks config, optimizer, epoch"):
        load_train_state(partial)


@pytest.fixture
def manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Path]:
    release = _pth(tmp_path, {"model": _state()}, "release.pth")
    entry = dict(model=NAME, tag="t4", url=release.as_uri(), sha256=hashlib.sha256(release.read_bytes()).hexdigest(),
                 verified=True, format="official-pth", num_classes=4)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "entries": [entry]}))
    monkeypatch.setenv("ZOO_MANIFEST", str(path))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    return entry, path


def test_manifest_entry_with_a_wrong_hash(manifest: tuple[dict, Path], tmp_path: Path) -> None:
    entry, path = manifest
    wrong = "ab" * 32
    path.write_text(json.dumps({"schema_version": 1, "entries": [{**entry, "sha256": wrong}]}))
    with pytest.raises(WeightsError) as e:  # what create_model(name, pretrained="t4") calls for LightZoo's models
        weights.load_pretrained(zoo.create_model(NAME, num_classes=4), NAME, "t4")
    assert f"sha256 mismatch for {NAME}:t4" in str(e.value)
    assert wrong in str(e.value) and entry["sha256"] in str(e.value)
    assert not any(p.is_file() for p in (tmp_path / "home").rglob("*"))  # deleted, never loaded


def test_manifest_unreadable_or_tag_unknown(manifest: tuple[dict, Path]) -> None:
    _, path = manifest
    with pytest.raises(WeightsError, match=rf"{NAME!r} has no weights tagged 'in22k'; known tags: t4"):
        weights.find_entry(NAME, "in22k")
    path.write_text("{not json")
    with pytest.raises(WeightsError, match=rf"weights manifest '{path}' cannot be read"):
        weights.find_entry(NAME)


def test_cli_on_a_truncated_checkpoint_is_one_line(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cut = _copy(saved, tmp_path, cut=True)
    rc = zoo_main(["export", str(cut), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"zoo export: error: checkpoint '{cut}' is not a readable safetensors file")


def test_building_and_loading_never_touch_the_network(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    zoo.create_model("emov2_1m")  # SECURITY.md: no network at model construction
    zoo.create_model(checkpoint_path=saved)
