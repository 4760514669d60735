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
from zoo.heads.change import ChangeModel
from zoo.heads.detection import DetectionModel
from zoo.heads.segmentation import SegmentationModel


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
    #: the evaluation preprocessing (``zoo.data.transforms``'s data config) the model and checkpoint carry
    data_config: dict[str, Any] = field(default_factory=dict)
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
        # the digits are 8x8 arrays upsampled straight to img_size (bilinear): a user's digit image the same way
        dc = _data_config(cfg, c, mean, std, color="gray", crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
        return DataBundle(DigitsDataset("train", augment=d.augment, **kw), DigitsDataset("val", **kw),
                          num_classes=10, class_names=list(DIGITS_CLASSES), in_chans=c, mean=mean, std=std,
                          color="gray", data_config=dc)
    if d.dataset == "folder":
        return _image_folder(cfg, in_chans)
    if d.dataset == "synthetic":
        return _synthetic_classification(cfg, in_chans)
    raise ConfigError(f"data.dataset {d.dataset!r} is not a classification dataset; use digits, folder or synthetic")


def _data_config(cfg: Any, in_chans: int, mean: Any = None, std: Any = None, **values: Any) -> dict[str, Any]:
    """The model's evaluation preprocessing for this run: the backbone's timm config, the task's rules and the
    data settings (``data.img_size``, mean/std, how images are read)."""
    from zoo.data.transforms import resolve_model_data_config

    size = cfg.data.img_size
    overrides = {"input_size": (in_chans, size, size), "in_chans": in_chans,
                 "mean": tuple(mean) if mean is not None else None, "std": tuple(std) if std is not None else None,
                 **values}
    return resolve_model_data_config(cfg.model.name, cfg.task, overrides)


def _image_folder(cfg: Any, in_chans: int | None) -> DataBundle:
    """``root/<split>/<class>/*.jpg`` read with torchvision's ImageFolder and a light augmentation."""
    from pathlib import Path

    from torchvision import datasets
    from torchvision.transforms import v2 as T

    from zoo.data.transforms import create_eval_transform

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
    dc = _data_config(cfg, c, mean, std)
    val_tf = create_eval_transform(dc)  # the model's one evaluation preprocessing (zoo eval, predict, export)
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), T.RandomHorizontalFlip(),
                          *common]) if d.augment else val_tf

    def loader(path: str) -> Any:
        from PIL import Image

        with Image.open(path) as im:
            return im.convert(mode)

    train = datasets.ImageFolder(str(root / d.train_split), transform=train_tf, loader=loader)
    val = datasets.ImageFolder(str(root / d.val_split), transform=val_tf, loader=loader)
    if train.classes != val.classes:
        raise ConfigError(f"train and val folders list different classes: {train.classes} vs {val.classes}")
    return DataBundle(train, val, num_classes=len(train.classes), class_names=list(train.classes), in_chans=c,
                      mean=mean, std=std, color="gray" if c == 1 else "rgb", data_config=dc)


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
                      mean=(0.0,) * c, std=(1.0,) * c, data_config=_data_config(cfg, c, (0.0,) * c, (1.0,) * c))



def _synth_root(cfg: Any, task: str) -> Any:
    """``data.dataset=synthetic`` for the dense tasks: ``zoo data synth`` output, written on first use."""
    from pathlib import Path

    from zoo.data.synthetic import write_synthetic

    s = dict(cfg.data.synth)
    n, k, seed = int(s.pop("num_images", 24)), int(s.pop("num_classes", 3)), int(s.pop("seed", 0))
    size = int(s.pop("size", cfg.data.img_size))
    if s:
        raise ConfigError(f"unknown data.synth keys: {sorted(s)} (num_images, num_classes, seed, size)")
    root = Path(cfg.data.root) if cfg.data.root else cfg.run_dir / "synthetic_data"
    marker = root / "synthetic.json"
    if not marker.is_file():
        write_synthetic(task, root, n=n, size=size, num_classes=k, seed=seed)
    return root, k


def build_dense_data(cfg: Any, task: str) -> DataBundle:
    """Detection (COCO json), segmentation (image + mask folders) and change detection (LEVIR-CD) data.

    Layouts (``data.root``; ``{split}`` is ``data.train_split`` / ``data.val_split``):
    - detection, ``coco``: ``annotations/instances_{split}.json`` with images in ``{split}/`` (COCO's own layout,
      e.g. split ``train2017``) or in ``images/`` (``zoo data synth``);
    - segmentation, ``seg_folder``: ``{split}/images/*`` and ``{split}/masks/*`` (same stems; ADE20K-style folders);
    - change detection, ``levir_cd``: ``{split}/A``, ``{split}/B``, ``{split}/label`` (0/255 labels);
    - ``synthetic``: the ``zoo data synth`` set for the task, generated into ``data.root`` (or the run folder).
    """
    from pathlib import Path

    from zoo.heads import get_task

    model_cls = get_task(task)
    dataset, build = next(_DENSE_DATA[c] for c in model_cls.__mro__ if c in _DENSE_DATA)
    d = cfg.data
    if d.dataset not in (dataset, "synthetic"):
        raise ConfigError(f"data.dataset {d.dataset!r} does not fit task {task}; use {dataset} or synthetic")
    synth_classes = None
    if d.dataset == "synthetic":
        root, synth_classes = _synth_root(cfg, task)
    elif not d.root:
        raise ConfigError(f"data.root is required for data.dataset={d.dataset}")
    else:
        root = Path(d.root)
    from zoo.data.collate import collate_fn
    from zoo.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = tuple(d.mean) if d.mean else tuple(IMAGENET_MEAN)
    std = tuple(d.std) if d.std else tuple(IMAGENET_STD)
    bundle = build(cfg, task, root, synth_classes, mean, std)
    bundle.collate_fn = collate_fn(task)
    return bundle


#: task model class -> (the dataset layout its data comes in, the builder); looked up along the class's MRO
_DENSE_DATA: dict[type, tuple[str, Callable[..., DataBundle]]] = {}


def _dense_data(model_cls: type, dataset: str) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    def add(build: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _DENSE_DATA[model_cls] = (dataset, build)
        return build

    return add


@_dense_data(DetectionModel, "coco")
def _coco_data(cfg: Any, task: str, root: Any, synth_classes: int | None, mean: Any, std: Any) -> DataBundle:
    from zoo.data.datasets import CocoDetectionDataset
    from zoo.data.transforms import build_transforms

    d = cfg.data
    tf = {s: build_transforms(task, train=s == "train") for s in ("train", "val")}

    def coco(split: str, train: bool) -> Any:
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            raise ConfigError(f"no COCO annotation file {ann} (expected root/annotations/instances_{split}.json)")
        images = root / split if (root / split).is_dir() else root / "images"
        return CocoDetectionDataset(ann, images, transform=tf["train" if train else "val"], num_classes=synth_classes)

    train, val = coco(d.train_split, d.augment), coco(d.val_split, False)
    # torchvision detectors normalise (and resize, to data.img_size) inside the model: images stay in [0, 1]
    return DataBundle(train, val, num_classes=train.num_classes, class_names=list(train.classes),
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), data_config=_data_config(cfg, 3))


def _dense_transforms(cfg: Any, task: str, root: Any, mean: Any, std: Any) -> tuple[Any, Any]:
    """Training augmentation (albumentations, mask-aware) and the evaluation transform: the model's one
    preprocessing (:class:`zoo.data.transforms.DenseEvalTransform`), the mask resampled alongside."""
    from zoo.data.transforms import DenseEvalTransform, build_transforms

    d = cfg.data
    for split in (d.train_split, d.val_split):
        if not (root / split).is_dir():
            raise ConfigError(f"data.root {str(root)!r} has no {split!r} folder")
    return (build_transforms(task, train=d.augment, size=d.img_size, mean=mean, std=std),
            DenseEvalTransform(_data_config(cfg, 3, mean, std)))


@_dense_data(SegmentationModel, "seg_folder")
def _segmentation_data(cfg: Any, task: str, root: Any, synth_classes: int | None, mean: Any, std: Any) -> DataBundle:
    from zoo.data.datasets import SegmentationFolderDataset

    d = cfg.data
    tf_train, tf_val = _dense_transforms(cfg, task, root, mean, std)
    k = synth_classes + 1 if synth_classes else None  # synthetic masks: 0 background + one per shape class
    train = SegmentationFolderDataset(root / d.train_split, transform=tf_train, num_classes=k)
    val = SegmentationFolderDataset(root / d.val_split, transform=tf_val, num_classes=k)
    num = k or cfg.model.num_classes
    if num is None:
        raise ConfigError("set model.num_classes for a segmentation folder dataset (classes in the masks)")
    names = ["background", *(f"class{i}" for i in range(num - 1))] if synth_classes else \
        [f"class{i}" for i in range(num)]
    return DataBundle(train, val, num_classes=num, class_names=names, mean=mean, std=std,
                      data_config=_data_config(cfg, 3, mean, std))


@_dense_data(ChangeModel, "levir_cd")
def _change_data(cfg: Any, task: str, root: Any, synth_classes: int | None, mean: Any, std: Any) -> DataBundle:
    from zoo.data.datasets import ChangeDetectionDataset

    d = cfg.data
    tf_train, tf_val = _dense_transforms(cfg, task, root, mean, std)
    train = ChangeDetectionDataset(root / d.train_split, transform=tf_train)
    val = ChangeDetectionDataset(root / d.val_split, transform=tf_val)
    return DataBundle(train, val, num_classes=2, class_names=["unchanged", "changed"], mean=mean, std=std,
                      data_config=_data_config(cfg, 3, mean, std))
