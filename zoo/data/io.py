"""Reading images and masks so that a broken file is a ``DataError`` that names it, not a PIL traceback.

Pillow's decompression-bomb guard stays on: a file that declares more than ``2 * PIL.Image.MAX_IMAGE_PIXELS``
pixels (a few KB of PNG can declare gigapixels) is a ``DataError`` before any pixel is decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _bomb(path: str | Path, e: Exception) -> DataError:
    return DataError(f"{path}: refused as a possible decompression bomb ({e}); if the image is genuine, raise "
                     f"PIL.Image.MAX_IMAGE_PIXELS before loading")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (cheap); ``DataError`` if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as e:
        raise _bomb(path, e) from e
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e})") from e


def read_image(path: str | Path) -> np.ndarray:
    """RGB ``uint8`` array ``(H, W, 3)``; corrupt files raise ``DataError``.

    Grey, palette and RGBA images are converted (alpha dropped). 16-bit grey images are scaled to 8 bits
    (``v / 257``) rather than clipped, which is what Pillow's own ``convert("RGB")`` would do (everything above
    255 would become white).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                grey = np.asarray(im).astype(np.float64)
                grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise _bomb(path, e) from e
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e})") from e


def read_mask(path: str | Path) -> np.ndarray:
    """Single-channel label map ``(H, W)`` as stored (palette PNGs keep their indices, not their colours)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im).copy()
    except Image.DecompressionBombError as e:
        raise _bomb(path, e) from e
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
