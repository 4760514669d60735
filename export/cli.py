"""``zoo export``: a thin command line over :func:`export.export_model`."""

from __future__ import annotations

import argparse
import sys

from zoo.cli import show_logs
from zoo.errors import ExportError

from .onnx_export import DEFAULT_OPSET, EXPORTERS, check_opset
from .pipeline import FORMATS, export_model
from .pte_select import SELECTS as PTE_SELECTS
from .quantize import MODES, SELECTS
from .spec import TASKS


def _size(text: str) -> list[int]:
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"input size {text!r}: use 224, 256x192 or 3,224,224") from e
    if len(parts) not in (1, 2, 3, 4):
        raise argparse.ArgumentTypeError(f"input size {text!r}: use 224, 256x192, 3,224,224 or 1,32,128,128 (3D)")
    return parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo export",
        description="Export a model or checkpoint to ONNX / ONNX Runtime Mobile (.ort), check it against PyTorch "
                    "in onnxruntime, optionally quantize to int8. Writes <name>.onnx (+ .int8.onnx, .ort, "
                    ".required_operators.config) and a <file>.json sidecar next to each model file.")
    p.add_argument("model", help="a model name (zoo list / any timm name) or a checkpoint (.safetensors with its "
                                 ".json sidecar; an official .pth needs --model)")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx, ort (= onnx + .ort + operator config), or with an optional extra: pte (ExecuTorch "
                        "XNNPACK, pip install 'lightzoo[executorch]') or tflite (LiteRT via litert-torch, "
                        "pip install 'lightzoo[tflite]'); each is checked in its own runtime")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", dest="model_name", help="model name for a checkpoint without a LightZoo sidecar")
    p.add_argument("--name", help="file stem (default: the model name, or MODEL_CHECKPOINTSTEM)")
    p.add_argument("--task", choices=TASKS, help="task (default: from the checkpoint, else classification)")
    p.add_argument("--head", help="task head (see zoo info NAME)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights first")
    p.add_argument("--input-size", type=_size,
                   help="H, HxW, C,H,W or C,D,H,W for 3D models (default: the checkpoint's / model's)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--dynamic-batch", action="store_true", help="batch axis named 'batch' instead of fixed 1")
    p.add_argument("--exporter", choices=EXPORTERS, default=None,
                   help="torch.onnx exporter (default: dynamo; legacy for LightM-UNet, whose scans it exports in "
                        "seconds); the other one is tried automatically if it fails")
    p.add_argument("--no-fallback", action="store_true", help="fail instead of trying the other exporter")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=None,
                   help="run onnx-simplifier (default: when installed)")
    p.add_argument("--atol", type=float, help="parity tolerance (default 1e-4 classification, 1e-3 dense tasks)")
    p.add_argument("--int8", action="store_true", help="also write an int8 model (<name>.int8.onnx)")
    p.add_argument("--int8-mode", choices=MODES, default="static", help="static QDQ (calibrated) or dynamic")
    p.add_argument("--int8-select", choices=SELECTS, default="all",
                   help="all: quantize every node onnxruntime can; auto: profile fp32 vs int8 node by node on this "
                        "machine and keep in float the nodes whose int8 kernel is slower (static mode)")
    p.add_argument("--calib", help="folder of images for parity and int8 calibration (A/ and B/ for change "
                                   "detection)")
    p.add_argument("--calib-limit", type=int, default=64, help="at most this many calibration images")
    p.add_argument("--target-platform", choices=("arm", "amd64"), help="--format ort: platform-specific "
                                                                      "optimisations (default: portable)")
    p.add_argument("--latency-rounds", type=int, default=20, help="int8 latency rounds (0 skips timing)")
    return p


def main(argv: list[str] | None = None) -> int:
    with show_logs("zoo.export", prefix="note: "):
        return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = args.input_size[0] if args.input_size and len(args.input_size) == 1 else args.input_size
    if args.int8_select == "auto" and args.int8_mode != "static":
        raise ExportError("--int8-select auto needs --int8-mode static (it profiles the calibrated QDQ model)")
    if args.calib_limit < 1:
        raise ExportError("--calib-limit must be at least 1")
    check_opset(args.opset)  # before loading the model: an impossible opset fails in a second, not after export
    result = export_model(
        args.model, args.out, format=args.format, model_name=args.model_name, name=args.name, task=args.task,
        head=args.head, num_classes=args.num_classes, pretrained=args.pretrained, input_size=size,
        opset=args.opset, dynamic_batch=args.dynamic_batch, exporter=args.exporter, fallback=not args.no_fallback,
        simplify=args.simplify, atol=args.atol, int8=args.int8, int8_mode=args.int8_mode, int8_select=args.int8_select,
        calib=args.calib, calib_limit=args.calib_limit, target_platform=args.target_platform,
        latency_rounds=args.latency_rounds)
    print(result.summary())
    return 0


# ------------------------------------------------------------------ zoo eval FILE (an exported file)
def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo eval", description="Evaluate an exported file (.onnx, .int8.onnx, .ort, .pte, .tflite) in its own "
        "runtime with the task's metrics. Dataset and preprocessing come from the file's JSON sidecar (the "
        "training config of the checkpoint it was exported from).")
    p.add_argument("file", nargs="?", help="the exported model file")
    p.add_argument("--checkpoint", help="same as FILE (the option zoo eval takes for checkpoints)")
    p.add_argument("--data", help="dataset folder (sets data.root), or a dataset name such as digits")
    p.add_argument("--split", help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--batch-size", type=int, help="loader batch size (the graph still runs one sample at a time)")
    p.add_argument("--threads", type=int, help="runtime threads (default: the runtime's own choice)")
    p.add_argument("--limit", type=int, help="score only the first N validation images")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (data.root=...)")
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """``zoo eval FILE`` for an exported file (the dispatcher routes exported suffixes here)."""
    from zoo.cli import data_overrides, print_metrics

    from .evaluate import evaluate_exported

    args = eval_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # argparse puts a key=value that comes first into FILE
    overrides = list(args.overrides)
    path = args.checkpoint or args.file
    if args.checkpoint and args.file:
        overrides.insert(0, args.file)
    if not path:
        raise ExportError("give the exported file: zoo eval FILE.onnx (or --checkpoint FILE)")
    with show_logs("zoo.export", prefix="note: "):
        metrics = evaluate_exported(path, data_overrides(args.data) + overrides, split=args.split,
                                    batch_size=args.batch_size, threads=args.threads, limit=args.limit)
    print_metrics(metrics, args.json)
    return 0


# ------------------------------------------------------------------ zoo benchmark CHECKPOINT
def benchmark_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zoo benchmark", description="Export a trained checkpoint to every format, score each file in its own "
        "runtime on the checkpoint's validation split, time them all at batch 1 in alternation with PyTorch, and "
        "write benchmark.csv / .json / .png.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by zoo train")
    p.add_argument("--data", help="dataset folder (sets data.root) or name (default: the checkpoint's)")
    p.add_argument("--formats", help=f"comma-separated, from {', '.join(FORMATS[1:])} (default: every format "
                                     "whose runtime is installed)")
    p.add_argument("--out", help="output folder (default: benchmark/ next to the checkpoint)")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1: a phone core)")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per format")
    p.add_argument("--limit", type=int, help="score only the first N validation images")
    p.add_argument("--int8-select", choices=SELECTS, default="all", help="int8 onnx node selection (zoo export)")
    p.add_argument("--pte-int8-select", choices=PTE_SELECTS, default="auto",
                   help="int8.pte: auto times candidate files on this CPU and keeps in float the operator kinds "
                        "(depthwise convolutions, elementwise add/mul) whose int8 kernels lose; all quantizes "
                        "every node XNNPACK's quantizer annotates")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (data.root=...)")
    return p


def benchmark_main(argv: list[str] | None = None) -> int:
    """``zoo benchmark CHECKPOINT``: progress on stderr, the table on stdout."""
    from pathlib import Path

    from zoo.cli import data_overrides

    from .benchmark import cpu_description, run_benchmark

    args = benchmark_parser().parse_args(sys.argv[1:] if argv is None else argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None
    out = args.out or str(Path(args.checkpoint).parent / "benchmark")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress on stderr, table on stdout
    with show_logs("zoo.export", prefix="note: "):
        result = run_benchmark(args.checkpoint, out, formats=formats,
                               overrides=data_overrides(args.data) + args.overrides, threads=args.threads,
                               rounds=args.rounds, limit=args.limit, int8_select=args.int8_select,
                               pte_int8_select=args.pte_int8_select, log=log)
    cpu = cpu_description()
    print(f"{result.model} on {result.dataset} ({result.num_images} validation images), {result.metric}; "
          f"CPU: {cpu['model']} [{', '.join(cpu['int8_flags']) or 'no int8 dot-product flags'}]")
    print(result.table())
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0
