"""What a wheel needs at run time is declared to be inside the package, and recipes resolve by name.

The wheel itself is built, installed into a fresh venv and used from /tmp by ``.ci/wheel_check.sh``; these tests
keep the declarations that script relies on from drifting, without building anything.
"""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest

from zoo.config import load_config
from zoo.errors import ConfigError
from zoo.manifest import manifest_path, schema_path
from zoo.resources import configs_dir, list_configs, resolve_config

ROOT = Path(__file__).resolve().parent.parent


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_packages_install_under_zoo_only_and_carry_manifest_schema_and_configs() -> None:
    cfg = _setup_cfg()
    packages = cfg["options"]["packages"].split()
    assert all(p == "zoo" or p.startswith("zoo.") for p in packages), packages
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert mapping == {"zoo.train": "train", "zoo.export": "export", "zoo.configs": "configs"}
    data = {k: v for k, v in cfg["options.package_data"].items()}
    assert {"weights_manifest.json", "weights_manifest.schema.json"} <= {s.strip() for s in data["zoo"].split(",")}
    assert data["zoo.configs"].strip() == "*/*.yaml" and list((ROOT / "configs").glob("*/*.yaml"))
    assert data["zoo.layers"].strip() == "selective_scan_cpu.c" and (ROOT / "zoo/layers/selective_scan_cpu.c").is_file()


def test_the_packaged_manifest_is_the_repository_manifest() -> None:
    packaged = ROOT / "zoo" / "weights_manifest.json"
    assert packaged.read_text() == (ROOT / "weights_manifest.json").read_text()
    assert manifest_path().resolve() == packaged.resolve()
    assert schema_path().parent == packaged.parent and json.loads(schema_path().read_text())


@pytest.mark.parametrize("name", ["classification/emov2_1m_digits", "classification/emov2_1m_digits.yaml",
                                  "configs/classification/emov2_1m_digits.yaml"])
def test_a_packaged_recipe_is_addressable_by_name_from_any_folder(name, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == configs_dir() / "classification" / "emov2_1m_digits.yaml"
    assert load_config(name) == load_config(ROOT / "configs" / "classification" / "emov2_1m_digits.yaml")


def test_a_file_path_wins_over_a_recipe_name_and_an_unknown_name_lists_the_recipes(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "classification" / "emov2_1m_digits.yaml"
    own.parent.mkdir()
    own.write_text("train:\n  epochs: 1\n")
    assert resolve_config("classification/emov2_1m_digits.yaml") == Path("classification/emov2_1m_digits.yaml")
    assert "classification/emov2_1m_digits" in list_configs()
    with pytest.raises(ConfigError, match="nor is it a packaged recipe .*classification/lwganet_l0_digits"):
        load_config("classification/nowhere")
