"""FeatUp's view jitter: reflect-pad, an optional zoom-in, an integer crop anywhere, a flip; one
draw per batch, applied alike to the image and to the upsampled map."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F

from ..registry import TRANSFORMS

__all__ = ["FeatUpJitter", "JitterParams"]


@dataclass(frozen=True)
class JitterParams:
    """One view, in pixels of the ``hw`` image it was drawn for."""

    hw: Tuple[int, int]
    zoom: float
    top: int
    left: int
    flip: bool


@TRANSFORMS.register_module()
class FeatUpJitter:
    """``sample(hw) -> JitterParams``; ``apply(x (B, C, H, W), params) -> (B, C, H, W)``.

    For an ``h x w`` image: reflect-pad by ``max_pad`` px; with probability ``zoom_prob`` zoom in
    by U[1, ``max_zoom``) (bilinear, to ``floor((h + 2 pad) * zoom)``); crop the ``h x w`` window
    at an integer offset drawn uniformly over every position that fits; flip horizontally with
    probability 1/2 (``flip``). No rotation, no perspective. One draw serves the whole batch.

    A map of another size (the upsampled features) gets the same view with the pad and offsets
    scaled to its grid (rounded); at the image's own size (FeatUp's 16x at 224 px) it is exact.
    Draws from the global torch RNG (re-seeded every training step).
    """

    def __init__(self, max_pad: int = 20, max_zoom: float = 2.0, zoom_prob: float = 0.5, flip: bool = True):
        if max_pad < 0 or max_zoom < 1 or not 0 <= zoom_prob <= 1:
            raise ValueError(f"FeatUpJitter: need max_pad >= 0, max_zoom >= 1, 0 <= zoom_prob <= 1; got "
                             f"{max_pad}, {max_zoom}, {zoom_prob}")
        self.max_pad, self.max_zoom, self.zoom_prob, self.flip = int(max_pad), float(max_zoom), float(zoom_prob), bool(flip)

    def sample(self, hw: Tuple[int, int]) -> JitterParams:
        h, w = int(hw[0]), int(hw[1])
        flip = self.flip and bool(torch.rand(()) < 0.5)
        zoom = 1.0 + (self.max_zoom - 1.0) * float(torch.rand(())) if bool(torch.rand(()) < self.zoom_prob) else 1.0
        room_h = int((h + 2 * self.max_pad) * zoom) - h + 1
        room_w = int((w + 2 * self.max_pad) * zoom) - w + 1
        top = int(torch.randint(0, room_h, ()))
        left = int(torch.randint(0, room_w, ()))
        return JitterParams((h, w), zoom, top, left, flip)

    def apply(self, x: torch.Tensor, p: JitterParams) -> torch.Tensor:
        h, w = x.shape[-2:]
        ry, rx = h / p.hw[0], w / p.hw[1]
        pad = min(round(self.max_pad * min(ry, rx)), h - 1, w - 1)  # reflect needs pad < size (tiny maps)
        out = F.pad(x, [pad] * 4, mode="reflect") if pad else x
        if p.zoom > 1.0:
            out = F.interpolate(out, scale_factor=p.zoom, mode="bilinear", align_corners=False)
        top = min(round(p.top * ry), out.shape[-2] - h)
        left = min(round(p.left * rx), out.shape[-1] - w)
        out = out[..., top:top + h, left:left + w]
        return out.flip(-1) if p.flip else out

    def __repr__(self) -> str:
        return (f"FeatUpJitter(max_pad={self.max_pad}, max_zoom={self.max_zoom}, zoom_prob={self.zoom_prob}, "
                f"flip={self.flip})")
