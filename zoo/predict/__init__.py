"""Inference with a trained checkpoint: the checkpoint's own preprocessing, the model's own post-processing.

A LightZoo checkpoint's sidecar records its data config (input size, colour mode, resize and crop, mean/std), so
prediction needs nothing but the checkpoint: the model resolves its evaluation transform
(:func:`zoo.data.transforms.create_eval_transform`, the same one ``zoo eval``, int8 calibration and the export
sidecar use) and its task model class turns outputs into a JSON record (top-k classes, boxes, class pixels).
``zoo predict`` (:mod:`zoo.predict.cli`) prints the records; with ``out_dir`` boxes are drawn and masks overlaid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.io import IMAGE_EXTENSIONS
from ..data.transforms import create_eval_transform, load_image, resolve_data_config
from ..errors import CheckpointError, DataError

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)


def list_inputs(path: Path) -> list[Path]:
    """The image at ``path``, or every image directly in the folder ``path``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such image or folder")
    return [path]


def overlay(image: Any, mask: np.ndarray, alpha: float = 0.5) -> Any:
    """``mask`` (class indices) coloured over the PIL ``image``; class 0 stays transparent."""
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(image.size, Image.NEAREST))
    colours = PALETTE[m % len(PALETTE)].astype(np.float32)
    on = (m > 0)[..., None]
    out = np.where(on, (1 - alpha) * rgb + alpha * colours, rgb)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def draw_boxes(image: Any, boxes: list[dict[str, Any]]) -> Any:
    """Boxes with class and score on a copy of the PIL ``image``."""
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

    Two-image tasks (change detection) need the second date: ``images_b`` (a file, or a folder with the same file
    names).
    """
    import zoo
    from zoo.heads import task_class

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} does not exist")
    meta = zoo.read_metadata(checkpoint)
    if meta is None:
        raise CheckpointError(f"{checkpoint}: `zoo predict` needs a LightZoo checkpoint (.safetensors + .json)")
    names = list(meta.get("class_names") or [str(i) for i in range(int(meta.get("num_classes") or 0))])
    model = zoo.create_model(checkpoint_path=checkpoint).eval().to(device)
    cls = task_class(model)
    data_config = resolve_data_config(model)
    transform = create_eval_transform(data_config)
    files = list_inputs(Path(inputs))
    groups = [[f] for f in files]
    if len(cls.input_names) > 1:
        if images_b is None:
            raise DataError(f"{cls.task} compares two images: pass the second image(s) with --image-b")
        b = Path(images_b)
        groups = [[f, b / f.name if b.is_dir() else b] for f in files]
        for _, fb in groups:
            if not fb.is_file():
                raise DataError(f"{fb}: second-date image not found (same file names in both folders)")
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for group in groups:
        pictures = [load_image(p, data_config) for p in group]
        images = [transform(p).to(device) for p in pictures]
        rec = cls.predict_record(model, images, names, topk=topk, score_threshold=score_threshold)
        res: dict[str, Any] = {"image": str(group[0]), **({"image_b": str(group[1])} if len(group) > 1 else {}),
                               **{k: v for k, v in rec.items() if k != "mask_array"}}
        if out:
            stem = group[0].stem
            if "boxes" in rec:
                draw_boxes(pictures[0], rec["boxes"]).save(out / f"{stem}_boxes.png")
            if "mask_array" in rec:
                from PIL import Image

                Image.fromarray(rec["mask_array"]).save(out / f"{stem}_mask.png")
                overlay(pictures[-1], rec["mask_array"]).save(out / f"{stem}_overlay.png")
                res["mask"] = str(out / f"{stem}_mask.png")
        results.append(res)
    if out:
        (out / "predictions.json").write_text(json.dumps(results, indent=2))
    return results


__all__ = ["draw_boxes", "list_inputs", "overlay", "predict"]
