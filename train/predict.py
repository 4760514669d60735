"""``zoo predict``: run a trained checkpoint on a user's images with the checkpoint's own preprocessing.

The sidecar of a LightZoo checkpoint records how its training data was fed to the model (input size, grey or RGB,
mean/std), so prediction needs nothing but the checkpoint: top-k classes are printed, detected boxes drawn,
segmentation and change masks overlaid, and every result is also written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import zoo
from zoo.errors import CheckpointError, DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTS)})")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such image or folder")
    return [path]


class Preprocess:
    """The checkpoint's preprocessing: colour mode, resize to the training size, scale to [0, 1], normalise."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.task = meta.get("task", "classification")
        self.in_chans = int(meta.get("in_chans", 3))
        _, self.h, self.w = meta.get("input_size", [self.in_chans, 224, 224])
        self.gray = meta.get("color") == "gray" or self.in_chans == 1
        self.mean = torch.tensor(meta.get("mean", [0.0] * self.in_chans), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(meta.get("std", [1.0] * self.in_chans), dtype=torch.float32).view(-1, 1, 1)

    def load(self, path: Path) -> Any:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return im.convert("L" if self.gray else "RGB")
        except Image.DecompressionBombError as e:  # not an OSError: it would escape as a traceback
            raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from e
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from e

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        if self.task != "detection":  # detectors resize inside the model and keep box coordinates in pixels
            image = image.resize((self.w, self.h), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if self.gray and self.in_chans != 1:
            x = x.expand(self.in_chans, -1, -1)
        return (x - self.mean) / self.std


PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)


def _overlay(image: Any, mask: np.ndarray, alpha: float = 0.5) -> Any:
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(image.size, Image.NEAREST))
    colours = PALETTE[m % len(PALETTE)].astype(np.float32)
    on = (m > 0)[..., None]
    out = np.where(on, (1 - alpha) * rgb + alpha * colours, rgb)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _draw_boxes(image: Any, boxes: list[dict[str, Any]]) -> Any:
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    for b in boxes:
        colour = tuple(int(c) for c in PALETTE[1 + b["label"] % (len(PALETTE) - 1)])
        draw.rectangle(b["box"], outline=colour, width=2)
        draw.text((b["box"][0] + 2, b["box"][1] + 1), f"{b['class']} {b['score']:.2f}", fill=colour)
    return out


@torch.no_grad()
def predict(checkpoint: str | Path, inputs: str | Path, *, images_b: str | Path | None = None, topk: int = 5,
            score_threshold: float = 0.3, out_dir: str | Path | None = None, device: str = "cpu"
            ) -> list[dict[str, Any]]:
    """Predictions for one image or every image in a folder; drawings and masks go to ``out_dir`` if given.

    Change detection needs the second date: ``images_b`` (a file, or a folder with the same file names).
    """
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist")
    meta = zoo.read_metadata(checkpoint)
    if meta is None:
        raise CheckpointError(f"{checkpoint}: `zoo predict` needs a LightZoo checkpoint (.safetensors + .json)")
    task = meta.get("task", "classification")
    names = list(meta.get("class_names") or [str(i) for i in range(int(meta.get("num_classes") or 0))])
    model = zoo.create_model(checkpoint_path=checkpoint).eval().to(device)
    pre = Preprocess(meta)
    files = _images(Path(inputs))
    if task == "change_detection":
        if images_b is None:
            raise DataError("change detection compares two dates: pass the second image(s) with --image-b")
        b = Path(images_b)
        pairs = [(f, b / f.name if b.is_dir() else b) for f in files]
        for _, fb in pairs:
            if not fb.is_file():
                raise DataError(f"{fb}: second-date image not found (same file names in both folders)")
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, f in enumerate(files):
        image = pre.load(f)
        x = pre(image).unsqueeze(0).to(device)
        res: dict[str, Any] = {"image": str(f)}
        if task == "classification":
            prob = model(x).float().softmax(-1)[0]
            p, idx = prob.topk(min(topk, prob.numel()))
            res["topk"] = [{"class": names[j] if j < len(names) else str(j), "index": int(j), "prob": float(q)}
                           for q, j in zip(p.tolist(), idx.tolist())]
        elif task == "detection":
            det = model([x[0]])[0]
            keep = det["scores"] >= score_threshold
            res["boxes"] = [{"box": [round(float(v), 2) for v in bx], "label": int(lb),
                             "class": names[int(lb)] if int(lb) < len(names) else str(int(lb)), "score": float(s)}
                            for bx, lb, s in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]
            if out:
                _draw_boxes(image, res["boxes"]).save(out / f"{f.stem}_boxes.png")
        else:
            if task == "change_detection":
                xb = pre(pre.load(pairs[i][1])).unsqueeze(0).to(device)
                logits = model(x, xb)
                res["image_b"] = str(pairs[i][1])
            else:
                logits = model(x)
            mask = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
            counts = np.bincount(mask.ravel(), minlength=len(names) or 1)
            res["class_pixels"] = {names[c] if c < len(names) else str(c): int(n) for c, n in enumerate(counts) if n}
            if out:
                from PIL import Image

                Image.fromarray(mask).save(out / f"{f.stem}_mask.png")
                base = pre.load(pairs[i][1]) if task == "change_detection" else image
                _overlay(base, mask).save(out / f"{f.stem}_overlay.png")
                res["mask"] = str(out / f"{f.stem}_mask.png")
        results.append(res)
    if out:
        (out / "predictions.json").write_text(json.dumps(results, indent=2))
    return results


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
