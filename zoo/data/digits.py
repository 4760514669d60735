"""scikit-learn's bundled handwritten digits as a torch ``Dataset``: real data that needs no download.

The UCI optical digits set ships inside scikit-learn: 1,797 grey images of 8x8 pixels (values 0-16), ten classes.
It is small enough to train a lightweight backbone on a laptop CPU in minutes, yet real enough that accuracy means
something, which is why ``zoo train`` uses it as its default. The held-out split is fixed (stratified, seed 0) so
that validation figures from different runs and machines are comparable. Images are upscaled once, at
construction, to ``img_size`` (bilinear), because the backbones downsample 32x and would reduce 8x8 to nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError

DIGITS_CLASSES = tuple(str(d) for d in range(10))
# Pixel statistics of the whole set after scaling 0..16 to 0..1 (computed once; grey, so one value per channel).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images ``(N, 8, 8)`` (values 0..16) and labels, read from the copy bundled with scikit-learn.

    The CSV is read directly rather than through ``sklearn.datasets.load_digits`` because importing that module
    pulls in much of scipy (seconds on a busy machine) for a 60 kB file.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset ships with scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits data is missing ({path}); reinstall scikit-learn")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def digits_split(val_fraction: float = 0.2, labels: np.ndarray | None = None) -> tuple[list[int], list[int]]:
    """Indices of the fixed train / held-out split, independent of any run's seed.

    Stratified: from each class, ``round(val_fraction * count)`` images chosen by a permutation with seed 0 are
    held out, so every class is represented in the same proportion in both splits.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    y = load_digits_arrays()[1] if labels is None else labels
    rng = np.random.RandomState(SPLIT_SEED)
    val: list[int] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        val += members[rng.permutation(len(members))[: int(round(val_fraction * len(members)))]].tolist()
    held = set(val)
    return [i for i in range(len(y)) if i not in held], sorted(val)


class DigitsDataset(Dataset):
    """One split of the digits set as normalised ``(C, img_size, img_size)`` float tensors and integer labels.

    ``in_chans`` copies the grey channel (3 lets every ImageNet-shaped backbone take it unchanged). ``augment``
    applies a random shift of up to ``img_size // 8`` pixels, drawn from torch's global
    generator, so a caller that seeds it per sample gets reproducible augmentation.
    """

    classes = DIGITS_CLASSES

    def __init__(self, split: str = "train", img_size: int = 32, in_chans: int = 3, val_fraction: float = 0.2,
                 augment: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                 ) -> None:
        if split not in ("train", "val", "all"):
            raise DataError(f"digits split must be 'train', 'val' or 'all', got {split!r}")
        if img_size < 8:
            raise DataError(f"digits img_size must be >= 8 (the images are 8x8), got {img_size}")
        images, labels = load_digits_arrays()
        train_idx, val_idx = digits_split(val_fraction, labels)
        idx = {"train": train_idx, "val": val_idx, "all": list(range(len(labels)))}[split]
        x = torch.from_numpy(images[idx]).div_(16.0).unsqueeze(1)
        self.images = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp_(0, 1)
        self.targets = torch.from_numpy(labels[idx])
        self.img_size, self.in_chans, self.augment = img_size, in_chans, augment
        self.mean = tuple(mean) if mean is not None else DIGITS_MEAN * in_chans
        self.std = tuple(std) if std is not None else DIGITS_STD * in_chans
        if len(self.mean) != in_chans or len(self.std) != in_chans:
            raise DataError(f"mean/std need {in_chans} values (one per channel), got {self.mean} / {self.std}")
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        # A random shift of up to img_size/8 pixels (zero fill): handwriting varies in position. Integer shifts by
        # pad-and-slice cost microseconds, so loading never limits a small model's training speed.
        p = max(self.img_size // 8, 1)
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        return F.pad(x, (p, p, p, p))[:, dy:dy + self.img_size, dx:dx + self.img_size]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.augment:
            x = self._augment(x)
        x = x.expand(self.in_chans, -1, -1)
        return (x - self._mean) / self._std, int(self.targets[i])
