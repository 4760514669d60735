"""Exception types users can catch.

Every user mistake (a bad name, a bad shape, a broken file) surfaces as one of these, with a message that says what
to do next, instead of a traceback from deep inside torch. Each also derives from the builtin a caller would
naturally expect (``KeyError`` for names, ``ValueError`` for shapes), so code written against timm keeps working.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error LightZoo raises on purpose."""


class UnknownModelError(ZooError, KeyError):
    """A model name that is not registered; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class InputShapeError(ZooError, ValueError):
    """An input tensor or image whose rank, channels, dtype or size the model cannot take, an empty batch, or one
    holding NaN/Inf values (``zoo.validate`` checks the last three for every model ``create_model`` returns)."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint that is truncated, corrupt, for another model, or has missing/unexpected keys."""


class WeightsError(ZooError, RuntimeError):
    """Pretrained weights that cannot be resolved, downloaded or verified (hash mismatch, offline, unknown tag)."""


class DataError(ZooError, ValueError):
    """A dataset file or annotation that cannot be used (corrupt image, mask size mismatch, label out of range)."""


class ConfigError(ZooError, ValueError):
    """A configuration file or override with an unknown key, a wrong type, or a missing file."""


class ExportError(ZooError, RuntimeError):
    """An export that failed or whose result does not compute what PyTorch computes."""
