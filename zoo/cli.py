"""The ``zoo`` console script: one dispatcher, one sub-command per job.

Sub-commands live in the wing that owns them and are imported only when called, so ``import zoo`` never pulls in
the trainer or the exporter (the library never depends on ``train`` or ``export``).
Each handler is ``main(argv: list[str]) -> int`` and parses its own arguments.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from .errors import ZooError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "list": ("zoo.info.cli:list_main", "list LightZoo's models (optionally matching a pattern)"),
    "info": ("zoo.info.cli:info_main", "parameters, MACs, feature pyramid and weights of a model"),
    "bench": ("zoo.bench.cli:main", "latency/params/MACs of models side by side with a timm peer"),
    "train": ("zoo.train.cli:main", "train a model from a YAML config (no arguments: emov2_1m on digits)"),
    "eval": ("zoo.train.cli:eval_main", "evaluate a checkpoint on a dataset with the task's metrics"),
    "predict": ("zoo.predict.cli:main", "run a trained checkpoint on images"),
    "export": ("zoo.export.cli:main", "export to ONNX / ORT Mobile / ExecuTorch / LiteRT with parity checks"),
    "benchmark": ("zoo.export.cli:benchmark_main", "every export format of a checkpoint: size, real metric, latency"),
    "xscore": ("zoo.train.xscore.cli:main", "cross-dataset robustness evaluation (xScore)"),
    "weights": ("zoo.weights.cli:main", "list, fetch and convert pretrained weights"),
    "data": ("zoo.data.cli:main", "make synthetic datasets for every task"),
}

#: ``zoo eval FILE`` on an exported file runs it in its own runtime (the exporter's evaluator), not the trainer's
EXPORTED_SUFFIXES = (".onnx", ".ort", ".pte", ".tflite")
EXPORTED_EVAL = "zoo.export.cli:eval_main"


@contextlib.contextmanager
def show_logs(logger_name: str, stream: TextIO | None = None, prefix: str = "") -> Iterator[None]:
    """For the duration of a command, the library's log records under ``logger_name`` appear as plain lines: INFO
    on ``stream`` (default: stderr), WARNING and up on stderr; warnings show as one ``warning:`` line each. The
    library logs and warns, the command line shows both. ``stream`` is the one passed when the command runs, so a
    captured stdout works."""
    import logging
    import warnings

    info = logging.StreamHandler(stream if stream is not None else sys.stderr)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    alarm = logging.StreamHandler(sys.stderr)
    alarm.setLevel(logging.WARNING)
    for h in (info, alarm):
        h.setFormatter(logging.Formatter(prefix + "%(message)s"))
    log = logging.getLogger(logger_name)
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(info)
    log.addHandler(alarm)
    log.setLevel(logging.INFO)
    log.propagate = False
    old_show = warnings.showwarning
    warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
    try:
        yield
    finally:
        warnings.showwarning = old_show
        log.removeHandler(info)
        log.removeHandler(alarm)
        log.setLevel(old_level)
        log.propagate = old_propagate


def data_overrides(data: str | None) -> list[str]:
    """``--data`` of the eval commands: an existing folder is ``data.root``, anything else a dataset name."""
    if not data:
        return []
    from pathlib import Path

    return [f"data.root={data}"] if Path(data).exists() else [f"data.dataset={data}"]


def print_metrics(metrics: dict, as_json: bool) -> None:
    """One report format for ``zoo eval`` on a checkpoint and on an exported file: JSON, or one aligned line per
    scalar (floats to 4 places; lists such as per-class IoU only in JSON)."""
    if as_json:
        import json

        print(json.dumps(metrics, indent=2, sort_keys=True))
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f"{k:>14}  {v:.4f}")
        elif isinstance(v, (int, str)):
            print(f"{k:>14}  {v}")


def _usage() -> str:
    width = max(len(k) for k in SUBCOMMANDS)
    rows = "\n".join(f"  {k.ljust(width)}  {help_}" for k, (_, help_) in SUBCOMMANDS.items())
    return f"usage: zoo <command> [options]\n\ncommands:\n{rows}\n\n`zoo <command> --help` for a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        import difflib

        close = difflib.get_close_matches(command, SUBCOMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"zoo: unknown command {command!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = SUBCOMMANDS[command]
    if command == "eval" and any(a.lower().endswith(EXPORTED_SUFFIXES) for a in rest):
        target = EXPORTED_EVAL
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            print(f"zoo {command}: not available in this installation ({e.name} is missing)", file=sys.stderr)
            return 2
        raise
    try:
        return int(getattr(module, func_name)(rest) or 0)
    except ZooError as e:
        print(f"zoo {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"zoo {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `zoo list | head`: the reader left; that is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
