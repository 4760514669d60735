"""Datasets, samplers and loaders for the trainer, built so that a resumed run sees exactly the same batches.

Exact resume needs two things from the data side, both independent of how many worker processes load it:
- the *order*: :class:`ResumableSampler` draws each epoch's permutation from ``(seed, epoch)`` alone (like
  ``DistributedSampler``, whose rank split it copies) and can start part-way through an epoch;
- the *augmentation*: the sampler hands out ``(index, sample_seed)`` pairs and :class:`SeededDataset` seeds torch
  (and an albumentations pipeline) with ``sample_seed`` around ``__getitem__``, so sample ``k`` of epoch
  ``e`` gets the same random crop whether it is loaded in the main process or in worker 3, before or after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoo.errors import ConfigError


class ResumableSampler(Sampler):
    """Per-epoch permutation from ``(seed, epoch)``, split across ranks, startable at any position.

    Yields ``(index, sample_seed)``. With ``shuffle=False`` the order is ``0..n-1`` and seeds are still drawn, so
    augmentation stays reproducible. ``drop_last`` here means "drop the tail that does not divide by the number of
    ranks" (otherwise the tail is padded by repeating indices, as ``DistributedSampler`` does).
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world_size, self.pad = n, shuffle, seed, rank, world_size, pad
        self.epoch = 0
        self.start = 0
        if pad:
            self.num_samples = math.ceil(n / world_size)
        else:  # unpadded: rank r gets indices r, r + W, ... (evaluation must not count any sample twice)
            self.num_samples = len(range(rank, n, world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` samples (of this rank)."""
        self.epoch, self.start = epoch, start

    def _order(self) -> tuple[list[int], list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        if self.pad:
            total = self.num_samples * self.world_size
            extra = total - self.n
            order = order + order[:extra] * (1 + extra // max(self.n, 1))
            order = order[:total]
        return order, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._order()
        mine = order[self.rank::self.world_size]
        pos = list(range(self.rank, len(order), self.world_size))
        for k in range(self.start, len(mine)):
            # seed by position in the epoch's global order so padded duplicates get their own augmentation
            yield mine[k], seeds[pos[k] % self.n] ^ pos[k]

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededDataset(Dataset):
    """Wrap a dataset so ``ds[(i, seed)]`` runs ``base[i]`` with its augmentation randomness fixed by ``seed``.

    Seeded: torch's CPU generator (torchvision transforms and our datasets draw from it) and, when the dataset
    has one, an albumentations pipeline (``transform`` / ``transforms`` / ``pipeline`` with ``set_random_seed``,
    since albumentations keeps its own generator). The torch generator is restored afterwards, so loading data in
    the main process does not disturb the stream the model uses (dropout, drop-path). numpy's and ``random``'s
    global generators are left alone: saving and restoring them costs more per sample than a small model's step.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._pipelines = [p for p in (getattr(base, a, None) for a in ("transform", "transforms", "pipeline"))
                           if p is not None and callable(getattr(p, "set_random_seed", None))]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int] | int) -> Any:
        if not isinstance(item, tuple):
            return self.base[item]
        index, seed = item
        gen = torch.default_generator
        saved = gen.get_state()
        try:
            gen.manual_seed(seed)
            for p in self._pipelines:
                p.set_random_seed(seed % 2**32)
            return self.base[index]
        finally:
            gen.set_state(saved)


@dataclass
class DataBundle:
    """What a task needs to know about its data: the two splits and the facts the checkpoint records."""

    train: Dataset
    val: Dataset
    num_classes: int
    class_names: list[str]
    in_chans: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    color: str = "rgb"  # how predict reads a user's image: "rgb" or "gray" (grey copied to in_chans channels)
    collate_fn: Callable[[list[Any]], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int, rank: int, world_size: int,
                workers: int, collate_fn: Callable | None = None, pin_memory: bool = False
                ) -> tuple[DataLoader, ResumableSampler]:
    """A DataLoader over ``SeededDataset(dataset)`` driven by a :class:`ResumableSampler`.

    The loader gets its own ``torch.Generator``: otherwise every new iterator would draw its worker base seed from
    the global generator, and a resumed run (which creates one more iterator) would drift from an uninterrupted one.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("the dataset is empty")
    sampler = ResumableSampler(n, shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    loader = DataLoader(
        SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate_fn, drop_last=train, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed), persistent_workers=False,
    )
    return loader, sampler


def build_classification_data(cfg: Any, in_chans: int | None) -> DataBundle:
    """The classification datasets named by ``data.dataset``: ``digits``, ``folder`` (ImageFolder layout)."""
    d = cfg.data
    if d.dataset == "digits":
        from zoo.data.digits import DIGITS_CLASSES, DIGITS_MEAN, DIGITS_STD, DigitsDataset

        c = in_chans or 3
        mean = tuple(d.mean) if d.mean else DIGITS_MEAN * c
        std = tuple(d.std) if d.std else DIGITS_STD * c
        kw = dict(img_size=d.img_size, in_chans=c, val_fraction=d.val_fraction, mean=mean, std=std)
        return DataBundle(DigitsDataset("train", augment=d.augment, **kw), DigitsDataset("val", **kw),
                          num_classes=10, class_names=list(DIGITS_CLASSES), in_chans=c, mean=mean, std=std,
                          color="gray")
    if d.dataset == "folder":
        return _image_folder(cfg, in_chans)
    if d.dataset == "synthetic":
        return _synthetic_classification(cfg, in_chans)
    raise ConfigError(f"data.dataset {d.dataset!r} is not a classification dataset; use digits, folder or synthetic")


def _image_folder(cfg: Any, in_chans: int | None) -> DataBundle:
    """``root/<split>/<class>/*.jpg`` read with torchvision's ImageFolder and a light augmentation."""
    from pathlib import Path

    from torchvision import datasets
    from torchvision.transforms import v2 as T

    d = cfg.data
    if not d.root:
        raise ConfigError("data.root is required for data.dataset=folder (root/train/<class>/*.jpg, root/val/...)")
    root = Path(d.root)
    for split in (d.train_split, d.val_split):
        if not (root / split).is_dir():
            raise ConfigError(f"data.root {str(root)!r} has no {split!r} folder (expected root/{split}/<class>/...)")
    c = in_chans or 3
    mean = tuple(d.mean) if d.mean else ((0.485, 0.456, 0.406) if c == 3 else (0.5,) * c)
    std = tuple(d.std) if d.std else ((0.229, 0.224, 0.225) if c == 3 else (0.5,) * c)
    mode = "L" if c == 1 else "RGB"
    common = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    size = d.img_size
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), T.RandomHorizontalFlip(),
                          *common] if d.augment else [T.Resize((size, size), antialias=True), *common])
    val_tf = T.Compose([T.Resize((size, size), antialias=True), *common])

    def loader(path: str) -> Any:
        from PIL import Image

        with Image.open(path) as im:
            return im.convert(mode)

    train = datasets.ImageFolder(str(root / d.train_split), transform=train_tf, loader=loader)
    val = datasets.ImageFolder(str(root / d.val_split), transform=val_tf, loader=loader)
    if train.classes != val.classes:
        raise ConfigError(f"train and val folders list different classes: {train.classes} vs {val.classes}")
    return DataBundle(train, val, num_classes=len(train.classes), class_names=list(train.classes), in_chans=c,
                      mean=mean, std=std, color="gray" if c == 1 else "rgb")


class _RandomImages(Dataset):
    """Random images whose class is written into their mean brightness, so the task is learnable (tests)."""

    def __init__(self, n: int, num_classes: int, img_size: int, in_chans: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, in_chans, img_size, img_size, generator=g) * 0.5
        self.images = noise + (self.targets.float() / max(num_classes - 1, 1) * 2 - 1).view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if torch.rand(()) < 0.5:  # a random flip, so seeded augmentation is exercised
            x = x.flip(-1)
        return x, int(self.targets[i])


def _synthetic_classification(cfg: Any, in_chans: int | None) -> DataBundle:
    s = dict(cfg.data.synth)
    n, k = int(s.pop("num_images", 64)), int(s.pop("num_classes", 4))
    if s:
        raise ConfigError(f"unknown data.synth keys for classification: {sorted(s)} (num_images, num_classes)")
    c = in_chans or 3
    size = cfg.data.img_size
    return DataBundle(_RandomImages(n, k, size, c, seed=1), _RandomImages(max(n // 4, 8), k, size, c, seed=2),
                      num_classes=k, class_names=[f"class{i}" for i in range(k)], in_chans=c,
                      mean=(0.0,) * c, std=(1.0,) * c)

