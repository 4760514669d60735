"""Bad training configs: each is a ``ConfigError`` naming the key (with the closest valid one), the file, or the
override, and ``zoo train`` turns it into exit code 1 with one line on stderr, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import main as zoo_main
from zoo.config import load_config
from zoo.errors import ConfigError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, match",
    [
        ("optim:\n  lrr: 0.1\n", r"unknown config key 'optim.lrr' in '.*recipe.yaml'; did you mean 'optim.lr'\?"),
        ("train:\n  lr: 0.1\n", r"unknown config key 'train.lr' in '.*recipe.yaml'; did you mean 'optim.lr'\?"),
        ("train:\n  epochs: ten\n", r"config key 'train.epochs' needs int, got 'ten' \(str\)"),
        ("optim: 3\n", r"config section 'optim' in '.*recipe.yaml' must be a mapping, got 3"),
        ("data:\n  mean: [a, b, c]\n", r"config key 'data.mean' needs a list of float or null, got \['a', 'b', 'c'\]"),
        ("model: {name: emov2_1m\n", r"config file '.*recipe.yaml' is not valid YAML"),
        ("train:\n  amp: fp32\n", r"config key 'train.amp' must be one of off, bf16, fp16, auto; got 'fp32'"),
        ("data:\n  batch_size: 0\n", r"config key 'data.batch_size' must be >= 1; got 0"),
        ("data:\n  mean: [0.5, 0.5, 0.5]\n", r"data.mean and data.std go together: set both or neither"),
    ],
    ids=["unknown-key", "key-in-wrong-section", "wrong-type", "section-not-mapping", "wrong-list-item",
         "invalid-yaml", "bad-choice", "out-of-range", "mean-without-std"],
)
def test_bad_config_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_yaml(tmp_path, text))


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epoch=5", r"unknown config key 'train.epoch' \(override\); did you mean 'train.epochs'\?"),
        ("optim.lr=fast", r"config key 'optim.lr' needs float, got 'fast' \(str\)"),
        ("train.epochs", r"override 'train.epochs' is not key=value \(e.g. train.epochs=5\)"),
        ("=5", r"override '=5' has an empty key"),
        ("optim=3", r"override 'optim' names a section; set a key inside it"),
        ("train.nonfinite=ignore", r"'train.nonfinite' must be one of stop, skip; got 'ignore'"),
    ],
    ids=["unknown-override", "override-type", "no-equals", "empty-key", "section-override", "nonfinite-choice"],
)
def test_bad_overrides(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nowhere.yaml' does not exist"):
        load_config(tmp_path / "nowhere.yaml")


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _yaml(tmp_path, f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml' is not valid YAML: could not determine a constructor"):
        load_config(path)
    assert not marker.exists()  # yaml.safe_load: tags never construct Python objects


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--config", "{tmp}/nowhere.yaml"], "zoo train: error: config file '{tmp}/nowhere.yaml' does not exist"),
        (["train.epochs=ten", "--print-config"], "zoo train: error: config key 'train.epochs' needs int, got 'ten'"),
    ],
    ids=["cli-missing-file", "cli-wrong-type"],
)
def test_cli_gives_exit_code_1_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                            match: str) -> None:
    rc = zoo_main(["train", *(a.format(tmp=tmp_path) for a in argv)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(match.format(tmp=tmp_path)) and err.count("\n") == 1, err
