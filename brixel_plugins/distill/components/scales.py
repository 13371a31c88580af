"""How an objective makes the lower-resolution copies of a training image (LiFT's scale pairs)."""
from __future__ import annotations

import torch

from ...images import resize
from ..registry import TRANSFORMS

__all__ = ["AntialiasedResize", "StridedSubsample"]


@TRANSFORMS.register_module()
class AntialiasedResize:
    """``(image (B, C, H, W), size) -> (B, C, size, size)``: bicubic, antialiased (no aliasing: a
    downscaled photo looks like a photo taken at that resolution)."""

    def __call__(self, image: torch.Tensor, size: int) -> torch.Tensor:
        return resize(image, size)

    def __repr__(self) -> str:
        return "AntialiasedResize()"


@TRANSFORMS.register_module()
class StridedSubsample:
    """LiFT's release: every s-th pixel, ``image[:, :, ::s, ::s]`` with ``s = H / size`` (an
    integer), no filtering (``::2`` and ``::4`` of the 448 px image)."""

    def __call__(self, image: torch.Tensor, size: int) -> torch.Tensor:
        h, w = image.shape[-2:]
        if h != w or h % size:
            raise ValueError(f"StridedSubsample: a square image whose side is a multiple of {size} is needed, "
                             f"got {h}x{w}")
        s = h // size
        return image[:, :, ::s, ::s]

    def __repr__(self) -> str:
        return "StridedSubsample()"
