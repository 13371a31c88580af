"""Upsampler registry. Importing this package registers every method."""
from .base import UPSAMPLERS, Upsampler, UpsamplerConfig, build_upsampler, list_upsamplers, register_upsampler
from . import interpolate  # noqa: F401  none, bilinear, bicubic, highres

__all__ = ["UPSAMPLERS", "Upsampler", "UpsamplerConfig", "build_upsampler", "list_upsamplers", "register_upsampler"]
from . import lift  # noqa: F401
from . import brixel, brixel_lean  # noqa: F401
from . import jbu, featsharp  # noqa: F401
from . import anyup  # noqa: F401
from . import jafar  # noqa: F401
from . import loftup  # noqa: F401
