"""``zoo predict --checkpoint CKPT IMAGE_OR_DIR [--out DIR]``: a thin command line over :func:`zoo.predict.predict`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import predict


def main(argv: list[str] | None = None) -> int:
    """``zoo predict --checkpoint CKPT IMAGE_OR_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="zoo predict", description="Run a trained LightZoo checkpoint on images: "
                                     "top-k classes, boxes drawn, masks overlaid; JSON results.")
    parser.add_argument("--checkpoint", required=True, help=".safetensors checkpoint written by zoo train")
    parser.add_argument("inputs", help="an image or a folder of images (change detection: the first date)")
    parser.add_argument("--image-b", help="change detection: the second date (image or folder, same names)")
    parser.add_argument("--out", help="folder for drawings, masks and predictions.json")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--score-threshold", type=float, default=0.3, help="detection: lowest score drawn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    results = predict(args.checkpoint, args.inputs, images_b=args.image_b, topk=args.topk,
                      score_threshold=args.score_threshold, out_dir=args.out, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        if "topk" in r:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["topk"]))
        elif "boxes" in r:
            print(f"{r['image']}: {len(r['boxes'])} boxes " + "; ".join(
                f"{b['class']} {b['score']:.2f} {b['box']}" for b in r["boxes"][:10]))
        else:
            print(f"{r['image']}: " + ", ".join(f"{k} {v}px" for k, v in r["class_pixels"].items()))
    if args.out:
        print(f"results: {Path(args.out) / 'predictions.json'}")
    return 0
