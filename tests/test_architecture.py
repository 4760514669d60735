"""The layering rules of ARCHITECTURE.md, checked on the source: what may import what, and where task and head
names may be compared. Both are read from the syntax tree, so a comment or a docstring never trips them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _package(path: Path) -> str:
    """The installed package a source file belongs to (train/ and export/ install as zoo.train / zoo.export)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts[:-1])
    if parts and parts[0] in ("train", "export"):
        parts = ["zoo", *parts]
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of everything ``path`` imports, at module level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(path).split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return out


def _offences(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for name in _imports(path):
            if name in forbidden or name.startswith(tuple(f"{f}." for f in forbidden)):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return sorted(set(bad))


def test_the_library_never_imports_train_or_export() -> None:
    # the one exception: the ``zoo`` dispatcher imports a wing lazily inside the sub-command that needs it
    files = [p for p in _modules("zoo") if p != ROOT / "zoo" / "cli.py"]
    assert _offences(files, ("zoo.train", "zoo.export", "train", "export")) == []


def test_train_and_export_never_import_each_other() -> None:
    assert _offences(_modules("train"), ("zoo.export", "export")) == []
    assert _offences(_modules("export"), ("zoo.train", "train")) == []


def test_the_import_check_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    src = ROOT / "export" / "_probe_for_test.py"
    try:
        src.write_text("def f():\n    from ..train import engine\n    import zoo.train.cli\n")
        assert _offences([src], ("zoo.train",)) == [
            "export/_probe_for_test.py imports zoo.train", "export/_probe_for_test.py imports zoo.train.cli",
            "export/_probe_for_test.py imports zoo.train.engine"]
    finally:
        src.unlink()


def _names_compared(path: Path, names: set[str]) -> list[str]:
    """``x == "detection"``, ``task != 'fcos'``, ``head in ("fpn", ...)`` where one side mentions a task or a head."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        consts = set()
        for side in sides:
            elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            consts |= {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        others = " ".join(ast.get_source_segment(source, s) or "" for s in sides
                          if not isinstance(s, (ast.Constant, ast.Tuple, ast.List, ast.Set)))
        if consts & names and ("task" in others or "head" in others):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


@pytest.fixture(scope="module")
def task_and_head_names() -> set[str]:
    from zoo.heads import all_heads, task_names

    return set(task_names()) | {h for heads in all_heads().values() for h in heads}


def test_no_code_outside_the_head_classes_branches_on_task_or_head_names(task_and_head_names: set[str]) -> None:
    files = [p for folder in ("zoo", "train", "export", "benchmarks") for p in _modules(folder)
             if (ROOT / "zoo" / "heads") not in p.parents]
    found = [hit for p in files for hit in _names_compared(p, task_and_head_names)]
    assert found == []


def test_the_branch_check_finds_a_branch(tmp_path: Path, task_and_head_names: set[str]) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("if cfg.task == 'detection' or head in ('fcos', 'x'):\n    pass\nif mode == 'linear':\n"
                     "    pass\n")
    real_root = globals()["ROOT"]
    globals()["ROOT"] = tmp_path
    try:
        hits = _names_compared(probe, task_and_head_names)
    finally:
        globals()["ROOT"] = real_root
    assert [h.split(":")[1] for h in hits] == ["1", "1"]  # both comparisons on line 1, not the unrelated one
