"""LightZoo: lightweight vision backbones faithful to their papers, registered into timm.

``import zoo`` registers every family with timm, so ``timm.create_model("emov2_5m")`` works too.
"""

from . import backbones  # noqa: F401  (registers the models with timm)
from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ExportError,
    InputShapeError,
    UnknownModelError,
    WeightsError,
    ZooError,
)
from .factory import TASKS, create_model
from .info import model_info
from .registry import list_models

__version__ = "0.1.0"

__all__ = [
    "TASKS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportError",
    "InputShapeError",
    "UnknownModelError",
    "WeightsError",
    "ZooError",
    "create_model",
    "list_models",
    "load_checkpoint",
    "model_info",
    "read_metadata",
    "save_checkpoint",
]
