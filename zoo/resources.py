"""Files LightZoo reads at run time and ships inside the package: the weights manifest, its schema, the recipes.

In a wheel they sit inside ``zoo/`` (``zoo/configs/<task>/<name>.yaml``); a source checkout or editable install
reads the repository's ``configs/`` folder, which setup.cfg maps to ``zoo/configs`` when building.
"""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """The folder of packaged training recipes (``configs/<task>/<model>_<data>.yaml``)."""
    packaged = _HERE / "configs"
    return packaged if packaged.is_dir() else _HERE.parent / "configs"


def list_configs() -> list[str]:
    """Names of the packaged recipes, ``<task>/<model>_<data>``, as ``zoo train --config`` accepts them."""
    root = configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob("*/*.yaml"))


def resolve_config(source: str | os.PathLike) -> Path:
    """``source`` itself when it is a file, else the packaged recipe it names, else ``source`` unchanged.

    A recipe is named as ``classification/emov2_1m_digits``, with or without ``.yaml`` and with or without a
    leading ``configs/``, so the commands in the docs work from any folder, in a wheel install too.
    """
    path = Path(source)
    if path.is_file() or path.is_absolute():
        return path
    name = path.as_posix().removeprefix("configs/")
    candidate = configs_dir() / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
    return candidate if candidate.is_file() else path
