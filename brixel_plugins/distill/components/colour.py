"""Colour jitter of a normalised image batch, one random draw per image (LiFT's release:
``ColorJitter(0.2, 0.2, 0.2, 0.2)``)."""
from __future__ import annotations

import torch
import torchvision.transforms as T

from ...backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from ..registry import TRANSFORMS

__all__ = ["ColourJitter"]


@TRANSFORMS.register_module()
class ColourJitter:
    """``jitter(image (B, 3, H, W) ImageNet-normalised) -> same shape``: torchvision's
    ``ColorJitter(brightness, contrast, saturation, hue)`` (factors drawn uniformly from
    ``[1 - b, 1 + b]``, ``[1 - c, 1 + c]``, ``[1 - s, 1 + s]``, ``[-h, h]``, applied in a random
    order) to each image in 0..1, then normalised again. Draws from the global torch RNG
    (re-seeded every training step, so a resumed run jitters the same way)."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.2):
        self.jitter = T.ColorJitter(brightness, contrast, saturation, hue)

    @property
    def ranges(self) -> dict:
        j = self.jitter
        return dict(brightness=tuple(j.brightness), contrast=tuple(j.contrast), saturation=tuple(j.saturation),
                    hue=tuple(j.hue))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
        pixels = (image.float() * std + mean).clamp(0, 1)
        out = torch.stack([self.jitter(p) for p in pixels])
        return ((out - mean) / std).to(image.dtype)

    def __repr__(self) -> str:
        return f"ColourJitter({self.ranges})"
