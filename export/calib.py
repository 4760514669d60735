"""Real images for parity checks and int8 calibration, preprocessed the way the exported model expects.

``--calib DIR`` is a folder of images (searched recursively: ``.jpg .jpeg .png .bmp .webp .tif .tiff``). For change
detection it must hold ``A/`` and ``B/`` sub-folders with the same file names (the before/after pairs, as in the
LEVIR-CD layout). Preprocessing mirrors evaluation: classification resizes the shorter side to ``size / crop_pct``
and centre-crops (timm's eval transform); dense tasks resize straight to the input size. Then ``/255``, ``(x -
mean) / std``, NCHW float32. Detection inputs stay in ``[0, 1]`` (the detector normalises inside).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zoo.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"calibration folder {str(folder)!r} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def preprocess(path: Path, input_size: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None,
               crop_pct: float | None) -> np.ndarray:
    """One image file -> ``(C, H, W)`` float32, normalised (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_size
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if crop_pct:
                scale = max(h, w) / crop_pct / min(im.size)
                im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))),
                               Image.Resampling.BICUBIC)
                left, top = (im.width - w) // 2, (im.height - h) // 2
                im = im.crop((left, top, left + w, top + h))
            else:
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"calibration image {str(path)!r} cannot be read ({e})") from e
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape[0] < c:  # e.g. PHC networks take RGB plus a zero channel
        arr = np.concatenate([arr, np.zeros((c - arr.shape[0], h, w), np.float32)], 0)
    if mean is not None and std is not None:
        m = np.asarray(list(mean) + [0.0] * (c - len(mean)), np.float32)[:c, None, None]
        s = np.asarray(list(std) + [1.0] * (c - len(std)), np.float32)[:c, None, None]
        arr = (arr - m) / s
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_calibration(folder: str | os.PathLike, input_size: Sequence[int], n_inputs: int = 1,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     crop_pct: float | None = None, limit: int = 64) -> tuple[np.ndarray, ...]:
    """Up to ``limit`` preprocessed images as a batch: one ``(N, C, H, W)`` array per graph input."""
    folder = Path(folder)
    if n_inputs == 2:
        a_dir, b_dir = folder / "A", folder / "B"
        if not (a_dir.is_dir() and b_dir.is_dir()):
            raise DataError(f"change-detection calibration needs {str(folder)!r} to hold A/ and B/ folders")
        names = [p.relative_to(a_dir) for p in list_images(a_dir)]
        pairs = [(a_dir / n, b_dir / n) for n in names if (b_dir / n).is_file()][:limit]
        if not pairs:
            raise DataError(f"no image pairs with the same name in {str(a_dir)!r} and {str(b_dir)!r}")
        return tuple(np.stack([preprocess(p[i], input_size, mean, std, crop_pct) for p in pairs]) for i in (0, 1))
    files = list_images(folder)[:limit]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(folder)!r}")
    return (np.stack([preprocess(p, input_size, mean, std, crop_pct) for p in files]),)


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
