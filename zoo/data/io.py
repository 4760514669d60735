"""Reading images and masks so that a broken file is a ``DataError`` that names it, not a PIL traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (cheap); ``DataError`` if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e})") from e


def read_image(path: str | Path) -> np.ndarray:
    """RGB ``uint8`` array ``(H, W, 3)``; grey and RGBA images are converted, corrupt ones raise ``DataError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e})") from e


def read_mask(path: str | Path) -> np.ndarray:
    """Single-channel label map ``(H, W)`` as stored (palette PNGs keep their indices, not their colours)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im).copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt mask ({e})") from e
    if arr.ndim == 3:
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()):
            raise DataError(f"{path}: colour mask; masks must hold class indices (grey or palette PNG)")
        arr = arr[..., 0].copy()
    return arr


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
