"""The training config: defaults, YAML, dotted overrides and the errors a user sees for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.config import Config, all_keys, load_config, parse_override
from zoo.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_emov2_1m_on_digits() -> None:
    cfg = load_config()
    assert (cfg.task, cfg.model.name, cfg.data.dataset) == ("classification", "emov2_1m", "digits")
    assert cfg.run_dir == Path("runs/emov2_1m-digits")
    assert cfg.model.kwargs == {"window_size": 0}  # the recipe's kwargs belong to its model ...
    assert load_config(None, ["model.name=resnet18"]).model.kwargs == {}  # ... and leave with it
    assert Config().model.kwargs == {}


def test_yaml_then_overrides_take_precedence(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: test_resnet\noptim:\n  lr: 0.5\ntrain:\n  epochs: 7\n")
    cfg = load_config(p, ["optim.lr=1e-3", "train.amp=bf16", "data.mean=[0.5]", "data.std=[0.25]"])
    assert cfg.model.name == "test_resnet" and cfg.train.epochs == 7
    assert cfg.optim.lr == 0.001  # YAML 1.1 reads "1e-3" as a string; the schema makes it a float
    assert cfg.train.amp == "bf16" and cfg.data.mean == [0.5]


@pytest.mark.parametrize("override, suggestion", [
    ("optim.lrr=0.1", "optim.lr"),
    ("train.lr=0.1", "optim.lr"),  # right key, wrong section
    ("train.epoch=3", "train.epochs"),
    ("lr=0.1", "optim.lr"),
    ("data.batchsize=8", "data.batch_size"),
])
def test_unknown_key_names_the_closest_valid_key(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key .*did you mean '{suggestion}'"):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match=r"'optim.weight_decy' in .*bad.yaml.*did you mean 'optim.weight_decay'"):
        load_config(p)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=ten", "'train.epochs' needs int, got 'ten'"),
    ("model.freeze=1.5", "'model.freeze' needs int, got 1.5"),
    ("optim.lr=[1]", "'optim.lr' needs float"),
    ("train.ema=maybe", "'train.ema' needs bool"),
    ("train.amp=bf61", "must be one of off, bf16, fp16, auto; got 'bf61'; did you mean 'bf16'"),
    ("data.batch_size=0", "'data.batch_size' must be >= 1"),
    ("data.mean=[0.5]", "data.mean and data.std go together"),
])
def test_wrong_type_or_value_is_a_clear_config_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_override_parsing() -> None:
    assert parse_override("model.head=null") == ("model.head", None)
    assert parse_override("data.mean=[0.1, 0.2]") == ("data.mean", [0.1, 0.2])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_override("train.epochs")


def test_config_round_trips_through_its_dict() -> None:
    cfg = load_config(None, ["model.kwargs={drop_path_rate: 0.1}", "train.ema=true"])
    again = load_config(cfg.to_dict())
    assert again == cfg and isinstance(again, Config)
    assert "optim.clip_grad" in all_keys() and "model" not in all_keys()


def test_every_shipped_config_validates() -> None:
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "configs/ holds the recipes"
    for f in files:
        cfg = load_config(f)
        assert f.parent.name == cfg.task, f"{f} sits under configs/{f.parent.name} but trains {cfg.task}"
        first = f.read_text().splitlines()[0]
        assert first.startswith("#"), f"{f} must be documented at its top"
