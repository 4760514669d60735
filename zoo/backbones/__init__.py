"""Backbone families, one module each. Importing this package registers every model with timm."""

from . import emov2, lightm_unet, lwganet, phnn, ulsam_mobilenet  # noqa: F401
