"""Every value ``zoo train --help-config`` shows parses, as a ``key=value`` override and in a YAML file.

YAML 1.1 reads ``off`` / ``on`` / ``yes`` / ``no`` as booleans, which broke ``train.amp=off``; the config reads
YAML 1.2 booleans (``true`` / ``false`` only) and converts ``on/off/yes/no`` for keys declared ``bool``.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from zoo.config import CHOICES, Config, all_keys, describe_keys, format_value, get_key, key_type, load_config

BOOL_SPELLINGS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def _documented_values(key: str) -> list[str]:
    """What --help-config shows for ``key`` (its default and choices), plus every spelling a bool or null takes."""
    shown = [format_value(get_key(Config(), key)), *CHOICES.get(key, ())]
    t = key_type(key)
    args = typing.get_args(t) or (t,)
    if bool in args:
        shown += list(BOOL_SPELLINGS)
    if type(None) in args:
        shown.append("null")
    return shown


def _nest(key: str, text: str) -> str:
    parts = key.split(".")
    lines = [f"{'  ' * i}{p}:" for i, p in enumerate(parts[:-1])]
    lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {text}")
    return "\n".join(lines) + "\n"


CASES = [(k, v) for k in all_keys() for v in _documented_values(k)]



@pytest.mark.parametrize("key, text", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_documented_value_parses_as_override_and_in_yaml(key: str, text: str, tmp_path: Path) -> None:
    extra = ["data.std=[1.0]"] if key == "data.mean" and text != "null" else []
    extra += ["data.mean=[0.0]"] if key == "data.std" and text != "null" else []
    from_override = get_key(load_config(None, [f"{key}={text}", *extra]), key)
    f = tmp_path / "c.yaml"
    f.write_text(_nest(key, text))
    from_yaml = get_key(load_config(f, extra), key)
    assert from_override == from_yaml
    t = key_type(key)
    args = typing.get_args(t) or (t,)
    if text == "null" and type(None) in args:
        assert from_override is None
    elif bool in args and text in BOOL_SPELLINGS:
        assert from_override is BOOL_SPELLINGS[text]
    elif key in CHOICES or str in args:
        assert format_value(from_override) == text  # a string value arrives as typed (``off`` stays "off")


def test_amp_off_and_on_off_spellings() -> None:
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    assert load_config(None, ["train.ema=on", "train.progress=no"]).train.ema is True
    assert load_config(None, ["train.progress=no"]).train.progress is False
    assert load_config(None, ["model.pretrained=off"]).model.pretrained is False
    assert load_config(None, ["model.pretrained=in1k_kd"]).model.pretrained == "in1k_kd"


def test_help_config_shows_choices_and_typable_defaults() -> None:
    text = describe_keys()
    assert "train.amp" in text and "default off  (one of off | bf16 | fp16 | auto)" in text
    assert "train.peft.method" in text and "train.distill.teacher" in text
    assert "default 'off'" not in text  # shown as typed, not as a Python repr
