"""Datasets, augmentation pipelines, collate functions and synthetic data for the four tasks.

Formats: classification image folders (``root/<class>/<img>``) and CSV lists (``path,label``); detection COCO json;
segmentation image + mask folders with the same stems; change detection the LEVIR-CD layout (``A/``, ``B/``,
``label/``). ``zoo data synth --task ... --out DIR`` writes a tiny deterministic dataset in each format.
"""

from importlib import import_module
from typing import Any

# lazy, so that ``import zoo.data.digits`` does not pull in albumentations
_WHERE = {
    "collate_fn": "collate", "build_transforms": "transforms", "synthetic_batch": "synthetic",
    "write_synthetic": "synthetic", "ChangeDetectionDataset": "datasets", "CocoDetectionDataset": "datasets",
    "CsvImageDataset": "datasets", "ImageFolderDataset": "datasets", "SegmentationFolderDataset": "datasets",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChangeDetectionDataset",
    "CocoDetectionDataset",
    "CsvImageDataset",
    "ImageFolderDataset",
    "SegmentationFolderDataset",
    "build_transforms",
    "collate_fn",
    "synthetic_batch",
    "write_synthetic",
]
