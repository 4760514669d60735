"""The README and docs/ stay true: every relative link resolves and every ``zoo ...`` command they show parses.

A command is checked by running the real ``zoo`` dispatcher on its words up to the point where the sub-command's
argparse parser has accepted them, then stopping before any work is done (wrappers around ``parse_args`` and
``parse_known_args`` raise once the outermost parse returns). A renamed flag, a removed
sub-command or a bad choice value therefore fails here, without training or exporting anything.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(?:bash|sh|console|shell)\n(.*?)```", re.S)
INLINE = re.compile(r"`(zoo [^`]+)`")
SYNOPSIS = re.compile(r"[\[\]|]|\.\.\.")  # usage synopses ("[--out DIR]", "onnx|ort") are not runnable commands


def _relative_links(page: Path) -> list[str]:
    links = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        links.append(target.split("#", 1)[0])
    return links


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    missing = [t for t in _relative_links(page) if t and not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing paths: {missing}"


def _commands(page: Path) -> list[tuple[str, bool]]:
    """(command, complete): fenced shell lines are complete commands; inline spans may name a command and a few
    of its flags in prose (`zoo export --int8`), so their required positionals may be left out."""
    text = page.read_text()
    found: list[tuple[str, bool]] = []
    for block in FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in re.split(r"&&|;", line.split(" #", 1)[0]):
                part = part.strip()
                if part.startswith("zoo ") and not SYNOPSIS.search(part):
                    found.append((part, True))
    for span in INLINE.findall(text):
        if not SYNOPSIS.search(span):
            found.append((span.strip(), False))
    return found


ALL_COMMANDS = sorted({(str(p.relative_to(ROOT)), c, full) for p in DOCS for c, full in _commands(p)})
MISSING_REQUIRED = "the following arguments are required"


class _Parsed(Exception):
    """Raised once a sub-command's parser accepted its arguments: the command is valid, nothing runs."""


@pytest.fixture
def parse_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop a command right after its outermost ``parse_args``/``parse_known_args`` call has accepted the words."""
    depth = {"n": 0}

    def stop_after(original):  # noqa: ANN001, ANN202
        def wrapper(self, args=None, namespace=None):  # noqa: ANN001, ANN202 (argparse's own signature)
            depth["n"] += 1
            try:
                result = original(self, args, namespace)
            finally:
                depth["n"] -= 1
            if depth["n"] == 0:
                raise _Parsed
            return result
        return wrapper

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args",
                        stop_after(argparse.ArgumentParser.parse_known_args))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after(argparse.ArgumentParser.parse_args))


def test_docs_show_zoo_commands() -> None:
    assert len(ALL_COMMANDS) >= 10, ALL_COMMANDS  # the extraction itself must keep finding the documented commands


def _parse_error(command: str, complete: bool, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """None when the ``zoo`` dispatcher and the sub-command's parser accept ``command``, else why not."""
    from zoo.cli import SUBCOMMANDS, main

    errors: list[str] = []

    def error(self, message):  # noqa: ANN001, ANN202 (argparse's own signature)
        errors.append(message)
        raise SystemExit(2)

    monkeypatch.setattr(argparse.ArgumentParser, "error", error)
    words = shlex.split(command)[1:]
    if not words or words[0] not in SUBCOMMANDS:
        return "unknown sub-command"
    try:
        rc = main(words)
    except _Parsed:
        return None
    except SystemExit as e:  # argparse rejected the words (exit 2) or printed help (exit 0)
        if e.code in (0, None) or (not complete and errors and errors[0].startswith(MISSING_REQUIRED)):
            return None
        return f"exit {e.code}: {errors}"
    return None if rc == 0 else f"returned {rc} before its parser accepted it"


@pytest.mark.parametrize(("page", "command", "complete"), ALL_COMMANDS)
def test_every_documented_zoo_command_parses(page: str, command: str, complete: bool, parse_only: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _parse_error(command, complete, monkeypatch)
    assert problem is None, f"{page}: `{command}` does not parse: {problem}"


@pytest.mark.parametrize(("command", "complete"), [
    ("zoo export emov2_1m --out x --format jpeg", True),   # bad choice
    ("zoo export emov2_1m --out x --no-such-flag", True),  # unknown flag
    ("zoo export --out x", True),                          # missing positional in a complete command
    ("zoo exprot emov2_1m", False),                        # unknown sub-command
])
def test_the_checker_rejects_broken_commands(command: str, complete: bool, parse_only: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parse_error(command, complete, monkeypatch) is not None
