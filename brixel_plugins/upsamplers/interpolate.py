"""Baselines: the last layer itself, its fixed interpolation, and DINOv3 run on an enlarged image."""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..images import resize
from .base import Upsampler, register_upsampler


@register_upsampler("none")
class NoUpsampler(Upsampler):
    """No upsampling: the backbone's own stride-16 last layer, (B,D,h,w) -> (B,D,h,w). What
    ``build_upsampler(None, spec)`` gives, so every consumer has one code path with or without
    an upsampler."""

    fixed_factor = 1

    def __init__(self, spec: BackboneSpec, factor: int = 1):
        super().__init__(spec, factor, (spec.depth - 1,))

    def forward(self, image, layers, backbone=None, image_hr=None, output_size=None):
        self.output_size(tuple(image.shape[-2:]), output_size)  # the token grid only
        return layers[self.last_layer]


@register_upsampler("bilinear")
class BilinearUpsampler(Upsampler):
    """Last-layer map resized by ``factor``: (B,D,h,w) -> (B,D,f*h,f*w), or to any ``output_size``.
    No parameters."""

    any_output_size = True

    def __init__(self, spec: BackboneSpec, factor: int = 4, mode: str = "bilinear"):
        if mode not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"mode must be bilinear, bicubic or nearest, got {mode!r}")
        super().__init__(spec, factor, (spec.depth - 1,), mode=mode)
        self.mode = mode

    def forward(self, image, layers, backbone=None, image_hr=None, output_size=None):
        # channels-last: on CPU torch resizes a map of hundreds of channels ~30x faster so (same values)
        x = layers[self.last_layer].contiguous(memory_format=torch.channels_last)
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        size = self.output_size(tuple(image.shape[-2:]), output_size)
        if size == tuple(s * self.factor for s in x.shape[-2:]):  # the factor itself: as without a size
            return F.interpolate(x, scale_factor=self.factor, mode=self.mode, **kw)
        return F.interpolate(x, size=size, mode=self.mode, **kw)


@register_upsampler("bicubic")
class BicubicUpsampler(BilinearUpsampler):
    """Bicubic resize of the last-layer map: (B,D,h,w) -> (B,D,f*h,f*w)."""

    def __init__(self, spec: BackboneSpec, factor: int = 4):
        super().__init__(spec, factor, mode="bicubic")
        self.config.pop("mode")


@register_upsampler("highres")
class HighResBackbone(Upsampler):
    """The expensive reference: DINOv3 on the picture at ``factor`` x the working size (``image_hr``
    resized there, bicubic antialiased; without one, ``image`` enlarged), last layer.
    (B,3,H,W) -> (B,D,f*H/16,f*W/16); cost grows ~f^4 in attention."""

    needs_image = True
    uses_image_hr = True  # the real pixels when the user has them, not an enlargement
    calls_backbone = True

    def __init__(self, spec: BackboneSpec, factor: int = 4):
        super().__init__(spec, factor, ())

    def forward(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor],
                backbone: Optional[nn.Module] = None, image_hr: Optional[torch.Tensor] = None,
                output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        self.output_size(tuple(image.shape[-2:]), output_size)  # factor x the grid only
        if backbone is None:
            raise ValueError("highres needs the backbone: call it through DenseFeaturizer")
        big = resize(self.pixels(image, image_hr), [s * self.factor for s in image.shape[-2:]])
        return backbone.last_layer_map(big)
