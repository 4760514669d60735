"""Backbone families, one module each. Importing this package registers every model with timm."""
from . import emov2  # noqa: F401
from . import ulsam_mobilenet  # noqa: F401
from . import lwganet  # noqa: F401
from . import phnn  # noqa: F401
from . import lightm_unet  # noqa: F401
