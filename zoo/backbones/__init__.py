"""Backbone families, one module each. Importing this package registers every model with timm, and the xScore
paper's peer set (:mod:`.xscore_peers`, timm/torchvision configurations) under their ``peer_*`` names."""

from . import emov2, lightm_unet, lwganet, phnn, ulsam_mobilenet, xscore_peers  # noqa: F401
