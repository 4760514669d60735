"""``zoo list`` and ``zoo info``."""

from __future__ import annotations

import argparse
import json

from ..registry import list_models, model_family
from . import format_info, model_info


def list_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo list", description="List LightZoo's registered models.")
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'emov2*'")
    args = parser.parse_args(argv)
    names = list_models(args.pattern)
    for name in names:
        print(f"{name:28s} {model_family(name)}")
    if not names:
        print(f"no LightZoo model matches {args.pattern!r}")
        return 1
    return 0


def info_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zoo info", description="Facts about a model, measured on a fresh instance.")
    parser.add_argument("name", help="model name (LightZoo or timm)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster for big models)")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N",
                        help="count MACs at this size, channels first: 3 512 512, or 1 64 64 64 for a 3D model")
    args = parser.parse_args(argv)
    info = model_info(args.name, macs=not args.no_macs, input_size=tuple(args.input_size) if args.input_size else None)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
