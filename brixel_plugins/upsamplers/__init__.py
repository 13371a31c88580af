"""Upsampler registry. Importing this package registers every method."""
from . import interpolate  # noqa: F401  none, bilinear, bicubic, highres
from .base import UPSAMPLERS, Upsampler, UpsamplerConfig, build_upsampler, list_upsamplers, register_upsampler

__all__ = ["UPSAMPLERS", "Upsampler", "UpsamplerConfig", "build_upsampler", "list_upsamplers", "register_upsampler"]
# importing each method file registers it
from . import anyup, brixel, brixel_lean, featsharp, jafar, jbu, lift, loftup  # noqa: F401,E402
