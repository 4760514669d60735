"""Preprocessing: the one evaluation transform every path uses, and the albumentations training pipelines.

**Evaluation / inference** (:func:`resolve_data_config` -> :func:`create_eval_transform`, as timm's
``resolve_data_config`` -> ``create_transform``): a model's data config is resolved once, from the backbone's timm
``pretrained_cfg``, the task's rules (dense tasks resize straight to the input size; detectors resize and normalise
inside) and the checkpoint it was trained as. Training's validation transform, ``zoo eval``, ``zoo predict``, int8
calibration and the export sidecar's recipe are all this one transform: PIL image -> resize (timm's eval resize
with ``crop_pct``/``crop_mode``/``interpolation``) -> centre crop -> ``[0, 1]`` -> ``(x - mean) / std``.

**Training augmentation** (:func:`build_transforms`): albumentations pipelines per task: box-aware for detection,
mask-aware for segmentation, and for change detection one geometric transform shared by image A, image B and the
mask (``additional_targets={"image_b": "image"}``). Detection pipelines output images in ``[0, 1]`` without
normalisation (torchvision detectors normalise and resize inside, with the backbone's mean/std); dense pipelines
normalise with ``mean``/``std``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never reach for the network on import

import albumentations as A  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from ..errors import ConfigError, DataError  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the keys of a data config: timm's, plus how to read the image and what the model does itself
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "color",
                    "resize_in_model", "normalize_in_model")


def resolve_data_config(model: Any, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The preprocessing of ``model`` (a task model or a bare timm module): timm's ``resolve_data_config`` on its
    ``pretrained_cfg`` (which a checkpoint's sidecar overlays), then ``overrides``, then the task's rules."""
    from ..heads import task_class

    return _resolve(dict(getattr(model, "pretrained_cfg", None) or {}), task_class(model).data_rules, overrides)


def resolve_model_data_config(name: str, task: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`resolve_data_config` before the model exists (training builds its data first): from the timm
    ``pretrained_cfg`` registered for ``name`` and the rules of ``task``."""
    import timm.models

    from ..heads import get_task

    cfg = timm.models.get_pretrained_cfg(name)
    return _resolve(cfg.to_dict() if cfg is not None else {}, get_task(task).data_rules, overrides)


def _resolve(cfg: dict[str, Any], rules: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    from timm.data import resolve_data_config as timm_resolve

    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if cfg.get("input_size") is None:
        cfg.pop("input_size", None)  # volumetric models: timm's default 2D size, the caller gives the real one
    out = timm_resolve(pretrained_cfg={k: v for k, v in cfg.items() if k in DATA_CONFIG_KEYS})
    in_chans = int(cfg.get("in_chans") or out["input_size"][0])
    out["input_size"] = (in_chans, *tuple(int(v) for v in out["input_size"][1:]))
    out["color"] = cfg.get("color") or ("gray" if in_chans == 1 else "rgb")
    out["crop_mode"] = cfg.get("crop_mode") or out.get("crop_mode") or "center"
    out["resize_in_model"] = bool(cfg.get("resize_in_model", False))
    out["normalize_in_model"] = bool(cfg.get("normalize_in_model", False))
    out.update(rules)
    out["mean"], out["std"] = tuple(float(v) for v in out["mean"]), tuple(float(v) for v in out["std"])
    return out


def data_config_for(input_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, **values: Any) -> dict[str, Any]:
    """A complete data config from a few values, the rest timm's defaults (for callers without a model)."""
    from timm.data import resolve_data_config as timm_resolve

    c = int(input_size[0])
    cfg = timm_resolve(pretrained_cfg={"input_size": tuple(input_size), "mean": tuple(mean), "std": tuple(std),
                                       **{k: v for k, v in values.items() if k in DATA_CONFIG_KEYS}})
    cfg.update({"crop_mode": values.get("crop_mode") or cfg.get("crop_mode") or "center",
                "color": values.get("color") or ("gray" if c == 1 else "rgb"),
                "resize_in_model": bool(values.get("resize_in_model", False)),
                "normalize_in_model": bool(values.get("normalize_in_model", False))})
    cfg["input_size"] = tuple(int(v) for v in input_size)
    return cfg


def scale_size(data_config: Mapping[str, Any]) -> tuple[int, int]:
    """The size timm's eval transform resizes to before the centre crop (``floor(size / crop_pct)`` per side)."""
    _, h, w = data_config["input_size"]
    crop_pct = float(data_config.get("crop_pct") or 0.875)
    return math.floor(h / crop_pct), math.floor(w / crop_pct)


def describe_eval_transform(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe of :func:`create_eval_transform` in words and numbers, for the export sidecar (an app follows
    it in Kotlin/Swift; the agreement test follows it with PIL + numpy)."""
    c, h, w = data_config["input_size"]
    steps: list[str] = [f"decode, convert to {'grey' if data_config['color'] == 'gray' else 'RGB'}"
                        + (f" and copy to {c} channels" if data_config["color"] == "gray" and c > 1 else "")]
    if not data_config["resize_in_model"]:
        sh, sw = scale_size(data_config)
        if data_config["crop_mode"] == "squash" or sh != sw:
            steps.append(f"resize to {sw}x{sh} (width x height) with {data_config['interpolation']} filtering")
        else:
            steps.append(f"resize the shorter side to {sh} keeping the aspect ratio (longer side "
                         f"int({sh} * long / short)) with {data_config['interpolation']} filtering")
        steps.append(f"centre crop {w}x{h} (left = round((W - {w}) / 2), top = round((H - {h}) / 2))")
    steps.append("x / 255 (float32, [0, 1])")
    if not data_config["normalize_in_model"]:
        steps.append("(x - mean) / std per channel")
    steps.append("CHW, add a batch axis")
    return {"steps": steps, "scale_size": list(scale_size(data_config)),
            "resize": "none (the graph takes the image at input_size; the model resizes itself)"
            if data_config["resize_in_model"] else "shorter side" if data_config["crop_mode"] != "squash"
            else "both sides"}


def load_image(path: str | os.PathLike, data_config: Mapping[str, Any]) -> Any:
    """The PIL image at ``path`` in the data config's colour mode (grey or RGB); a clear ``DataError`` for a file
    that is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("L" if data_config.get("color") == "gray" else "RGB")
    except Image.DecompressionBombError as e:  # not an OSError: it would escape as a traceback
        raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from e
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from e


def create_eval_transform(data_config: Mapping[str, Any]) -> Callable[[Any], torch.Tensor]:
    """PIL image -> ``(C, H, W)`` float32 tensor, the model's evaluation preprocessing (see the module docstring).

    timm's ``create_transform`` does the resize, crop, scaling and normalisation; grey images read for a
    3-channel model are copied to every channel (before normalising), and models with more input channels than
    the image has (PHC networks take RGB plus a zero channel) get zero channels after normalising.
    """
    from timm.data import create_transform
    from torchvision.transforms import functional as TF

    c, h, w = data_config["input_size"]
    gray_to_rgb = data_config["color"] == "gray" and c >= 3
    img_c = 3 if (gray_to_rgb or data_config["color"] != "gray") else 1
    if data_config["resize_in_model"]:
        resize: Callable[[Any], Any] = lambda im: im  # noqa: E731
    else:
        tf = create_transform((h, w), is_training=False, interpolation=data_config["interpolation"],
                              crop_pct=data_config["crop_pct"], crop_mode=data_config["crop_mode"],
                              use_prefetcher=True)  # resize + crop only: scaling and normalising follow here
        resize = tf
    mean = torch.tensor(list(data_config["mean"])[:img_c], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(list(data_config["std"])[:img_c], dtype=torch.float32).view(-1, 1, 1)

    def transform(image: Any) -> torch.Tensor:
        if gray_to_rgb:
            image = image.convert("RGB")
        x = resize(image)
        x = TF.to_tensor(x) if not isinstance(x, torch.Tensor) else x.float() / 255.0
        if not data_config["normalize_in_model"]:
            x = (x - mean) / std
        if x.shape[0] < c:
            x = torch.cat([x, x.new_zeros(c - x.shape[0], *x.shape[1:])])
        return x

    return transform


class DenseEvalTransform:
    """The evaluation transform of a dense sample (an image, or a co-registered pair, and its mask), called like an
    albumentations pipeline (``image=``, ``image_b=``, ``mask=`` as HWC / HW uint8 arrays).

    Why: each image goes through :func:`create_eval_transform`, the very preprocessing ``zoo predict``, int8
    calibration and the export sidecar describe, so a segmentation model is validated on the images an app feeds
    it; the mask follows the same geometry with nearest-neighbour resampling (labels must not blend). Dense data
    configs resize straight to the input size (``crop_mode`` squash, ``crop_pct`` 1), so no label is cropped away.
    """

    def __init__(self, data_config: Mapping[str, Any]) -> None:
        if data_config.get("crop_mode") != "squash" or float(data_config.get("crop_pct") or 1.0) != 1.0:
            raise ConfigError("a dense evaluation transform resizes straight to the input size: its data config "
                              "needs crop_mode 'squash' and crop_pct 1.0")
        self.image_transform = create_eval_transform(data_config)
        self.size = tuple(int(s) for s in data_config["input_size"][1:])

    def __call__(self, image: Any, mask: Any = None, image_b: Any = None) -> dict[str, Any]:
        import numpy as np
        from PIL import Image

        out: dict[str, Any] = {"image": self.image_transform(Image.fromarray(image))}
        if image_b is not None:
            out["image_b"] = self.image_transform(Image.fromarray(image_b))
        if mask is not None:
            h, w = self.size
            resized = Image.fromarray(np.ascontiguousarray(mask)).resize((w, h), Image.Resampling.NEAREST)
            out["mask"] = torch.from_numpy(np.array(resized))
        return out


def preprocess_file(path: str | os.PathLike | Path, data_config: Mapping[str, Any]) -> torch.Tensor:
    """``load_image`` + ``create_eval_transform`` for one file."""
    return create_eval_transform(data_config)(load_image(path, data_config))


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def build_transforms(task: str, train: bool, size: int | Sequence[int] | None = 224,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     crop_pct: float = 0.875) -> A.Compose:
    """The default albumentations pipeline for ``task`` (chosen by the task model class: what its samples carry);
    ``size`` is the training crop (``None``: keep the image size, dense tasks only).
    Datasets accept any other ``albumentations.Compose`` with the same targets."""
    from ..heads import get_task

    try:
        model_cls = get_task(task)
    except ConfigError as e:
        raise ConfigError(f"unknown task {task!r}") from e
    table = _augmentation_table()
    build = next(table[c] for c in model_cls.__mro__ if c in table)
    return build(model_cls, train, size, A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
                 crop_pct)


def _image_pipeline(model_cls: type, train: bool, size: Any, norm: A.Normalize, crop_pct: float) -> A.Compose:
    """Images and a class: random resized crop and flip; evaluation as timm's (short side to size / crop_pct)."""
    h, w = _hw(size or 224)
    if train:
        ops = [A.RandomResizedCrop(size=(h, w), scale=(0.08, 1.0)), A.HorizontalFlip(p=0.5)]
    else:  # timm's eval: resize the short side to size / crop_pct, centre crop
        ops = [A.SmallestMaxSize(max_size=int(round(min(h, w) / crop_pct))), A.CenterCrop(height=h, width=w)]
    return A.Compose([*ops, norm, ToTensorV2()])


def _box_pipeline(model_cls: type, train: bool, size: Any, norm: A.Normalize, crop_pct: float) -> A.Compose:
    """Images and boxes: flips and photometric jitter; [0, 1] output (the detector resizes and normalises)."""
    ops = [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.3)] if train else [A.NoOp()]
    return A.Compose([*ops, A.ToFloat(max_value=255.0), ToTensorV2()],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.1,
                                              min_width=1, min_height=1))


def _mask_pipeline(model_cls: Any, train: bool, size: Any, norm: A.Normalize, crop_pct: float) -> A.Compose:
    """Images (one, or a co-registered pair sharing one geometric transform) and a mask."""
    extra = {f"image_{k}": "image" for k in "b"[: len(model_cls.batch_keys) - 1]}
    ops: list[A.BasicTransform] = []
    if train:
        if size is not None:
            h, w = _hw(size)
            ops += [A.PadIfNeeded(min_height=h, min_width=w, fill=0, fill_mask=255),
                    A.RandomResizedCrop(size=(h, w), scale=(0.25, 1.0))]
        ops += [A.HorizontalFlip(p=0.5)]
        if model_cls.augment_rotations:  # overhead imagery has no "up": flips and right-angle turns
            ops += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    elif size is not None:
        h, w = _hw(size)
        ops += [A.Resize(height=h, width=w)]
    return A.Compose([*ops, norm, ToTensorV2()], additional_targets=extra)


def _augmentation_table() -> dict[type, Callable[..., A.Compose]]:
    """Task model class -> its training pipeline (looked up along the class's MRO)."""
    from ..heads.classification import ClassificationModel
    from ..heads.detection import DetectionModel
    from ..heads.segmentation import DenseTaskModel

    return {ClassificationModel: _image_pipeline, DetectionModel: _box_pipeline, DenseTaskModel: _mask_pipeline}
