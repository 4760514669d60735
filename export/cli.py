"""``zoo export``: a thin command line over :func:`export.export_model`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

from zoo.errors import ExportError

from .onnx_export import DEFAULT_OPSET, EXPORTERS, check_opset
from .pipeline import FORMATS, export_model
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


@contextlib.contextmanager
def _report_to_stderr() -> Iterator[None]:
    """The library logs and warns; the command line shows both as one ``note:`` / ``warning:`` line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    log = logging.getLogger("zoo.export")
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    old_show = warnings.showwarning
    warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
    try:
        yield
    finally:
        warnings.showwarning = old_show
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


def main(argv: list[str] | None = None) -> int:
    with _report_to_stderr():
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
