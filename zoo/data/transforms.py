"""Albumentations pipelines per task: box-aware for detection, mask-aware for segmentation, and for change detection
one geometric transform shared by image A, image B and the mask (``additional_targets={"image_b": "image"}``).

Detection pipelines output images in ``[0, 1]`` without normalisation (torchvision detectors normalise and resize
inside, with the backbone's mean/std); dense pipelines normalise with ``mean``/``std``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never reach for the network on import

import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from ..errors import ConfigError  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def build_transforms(task: str, train: bool, size: int | Sequence[int] | None = 224,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     crop_pct: float = 0.875) -> A.Compose:
    """The default pipeline for ``task``; ``size`` is the training crop (``None``: keep the image size, dense
    tasks only). Datasets accept any other ``albumentations.Compose`` with the same targets."""
    norm = A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)
    if task == "classification":
        h, w = _hw(size or 224)
        if train:
            ops = [A.RandomResizedCrop(size=(h, w), scale=(0.08, 1.0)), A.HorizontalFlip(p=0.5)]
        else:  # timm's eval: resize the short side to size / crop_pct, centre crop
            ops = [A.SmallestMaxSize(max_size=int(round(min(h, w) / crop_pct))), A.CenterCrop(height=h, width=w)]
        return A.Compose([*ops, norm, ToTensorV2()])
    if task == "detection":
        ops = [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.3)] if train else [A.NoOp()]
        return A.Compose([*ops, A.ToFloat(max_value=255.0), ToTensorV2()],
                         bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.1,
                                                  min_width=1, min_height=1))
    if task in ("segmentation", "change_detection"):
        extra = {"image_b": "image"} if task == "change_detection" else {}
        ops: list[A.BasicTransform] = []
        if train:
            if size is not None:
                h, w = _hw(size)
                ops += [A.PadIfNeeded(min_height=h, min_width=w, fill=0, fill_mask=255),
                        A.RandomResizedCrop(size=(h, w), scale=(0.25, 1.0))]
            ops += [A.HorizontalFlip(p=0.5)]
            if task == "change_detection":  # overhead imagery has no "up": flips and right-angle turns
                ops += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
        elif size is not None:
            h, w = _hw(size)
            ops += [A.Resize(height=h, width=w)]
        return A.Compose([*ops, norm, ToTensorV2()], additional_targets=extra)
    raise ConfigError(f"unknown task {task!r}")
