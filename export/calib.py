"""Real images for parity checks and int8 calibration, preprocessed the way the exported model expects.

``--calib DIR`` is a folder of images (searched recursively; the extensions of :data:`zoo.data.io.IMAGE_EXTENSIONS`).
For change detection it must hold ``A/`` and ``B/`` sub-folders with the same file names (the before/after pairs, as
in the LEVIR-CD layout). Each image goes through the model's own evaluation transform
(:func:`zoo.data.transforms.create_eval_transform` on the model's data config), the same one ``zoo predict``,
``zoo eval`` and the export sidecar's recipe use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data.io import IMAGE_EXTENSIONS
from zoo.data.transforms import create_eval_transform, load_image
from zoo.errors import DataError


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"calibration folder {str(folder)!r} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def preprocess(path: Path, data_config: Mapping[str, Any]) -> np.ndarray:
    """One image file -> ``(C, H, W)`` float32 through the model's evaluation transform."""
    return create_eval_transform(data_config)(load_image(path, data_config)).numpy().astype(np.float32)


def load_calibration(folder: str | os.PathLike, data_config: Mapping[str, Any], n_inputs: int = 1,
                     limit: int = 64) -> tuple[np.ndarray, ...]:
    """Up to ``limit`` preprocessed images as a batch: one ``(N, C, H, W)`` array per graph input."""
    folder = Path(folder)
    transform = create_eval_transform(data_config)

    def one(path: Path) -> np.ndarray:
        return transform(load_image(path, data_config)).numpy().astype(np.float32)

    if n_inputs == 2:
        a_dir, b_dir = folder / "A", folder / "B"
        if not (a_dir.is_dir() and b_dir.is_dir()):
            raise DataError(f"change-detection calibration needs {str(folder)!r} to hold A/ and B/ folders")
        names = [p.relative_to(a_dir) for p in list_images(a_dir)]
        pairs = [(a_dir / n, b_dir / n) for n in names if (b_dir / n).is_file()][:limit]
        if not pairs:
            raise DataError(f"no image pairs with the same name in {str(a_dir)!r} and {str(b_dir)!r}")
        return tuple(np.stack([one(p[i]) for p in pairs]) for i in (0, 1))
    files = list_images(folder)[:limit]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(folder)!r}")
    return (np.stack([one(p) for p in files]),)


def synthetic_calibration(input_size: Sequence[int], n_inputs: int = 1, n: int = 16,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          seed: int = 0) -> tuple[np.ndarray, ...]:
    """Smooth random "images" (uniform noise blurred by 8x8 block upsampling) in the model's normalised range.

    Used when no ``--calib`` folder is given: activation ranges will not match real photos, so int8 accuracy is
    only indicative; the caller warns.
    """
    rng = np.random.default_rng(seed)
    c, *spatial = input_size
    out = []
    for _ in range(n_inputs):
        img = rng.random((n, c, *(-(-s // 8) for s in spatial)), dtype=np.float32)
        for axis, s in enumerate(spatial, start=2):
            img = np.repeat(img, 8, axis).take(range(s), axis=axis)
        if mean is not None and std is not None:
            shape = (c,) + (1,) * len(spatial)
            m = np.asarray(list(mean) + [0.0] * (c - len(mean)), np.float32)[:c].reshape(shape)
            sd = np.asarray(list(std) + [1.0] * (c - len(std)), np.float32)[:c].reshape(shape)
            img = (img - m) / sd
        out.append(np.ascontiguousarray(img, dtype=np.float32))
    return tuple(out)
