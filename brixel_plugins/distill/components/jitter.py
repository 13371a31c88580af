"""View jitters: random views of a training batch, applied alike to the image and to maps of it.

One interface for every jitter (a ``TRANSFORMS`` component; the objectives use only these two):

- ``view = jitter.sample(x)``: one random view for the batch ``x`` (B, C, H, W), drawn from the
  global torch RNG (re-seeded every training step by the loop);
- ``y_v, valid = jitter.apply(y, view)``: ``y`` (B, C', H', W'), the batch or a map of it at any
  size, seen in that view (B, C', H', W'), and where the view shows the picture itself (B, 1, H',
  W'): 1 inside, 0 outside (padding), between at a border the view's resampling blends.

:class:`FeatUpJitter` (pad, zoom, crop, flip; one draw for the whole batch) is here; the
homography jitters (one view per image: :class:`~.homography.HomographyJitter`,
:class:`~.homography.FeatSharpJitter`) are in :mod:`.homography`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import torch
import torch.nn.functional as F

from ..registry import TRANSFORMS

__all__ = ["FeatUpJitter", "JitterParams", "ViewJitter"]


class ViewJitter:
    """The interface of every view jitter (see the module docstring)."""

    def sample(self, x: torch.Tensor) -> Any:  # pragma: no cover - abstract
        """One random view for the batch ``x`` (B, C, H, W)."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, view: Any) -> Tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """``x`` (B, C, H, W) (the batch or a map of it, any size) seen in ``view``: (the view (B, C, H, W),
        valid (B, 1, H, W))."""
        raise NotImplementedError


@dataclass(frozen=True)
class JitterParams:
    """One view, in pixels of the ``hw`` image it was drawn for."""

    hw: Tuple[int, int]
    zoom: float
    top: int
    left: int
    flip: bool


@TRANSFORMS.register_module()
class FeatUpJitter(ViewJitter):
    """FeatUp's view: ``sample(x) -> JitterParams`` (one draw for the batch), ``apply(y, params)``.

    For an ``h x w`` image: reflect-pad by ``max_pad`` px; with probability ``zoom_prob`` zoom in
    by U[1, ``max_zoom``) (bilinear, to ``floor((h + 2 pad) * zoom)``); crop the ``h x w`` window
    at an integer offset drawn uniformly over every position that fits; flip horizontally with
    probability 1/2 (``flip``). No rotation, no perspective. The mask ``valid`` is 0 on the
    reflected padding the crop shows.

    A map of another size (the upsampled features) gets the same view with the pad and offsets
    scaled to its grid (rounded); at the image's own size (FeatUp's 16x at 224 px) it is exact.
    """

    def __init__(self, max_pad: int = 20, max_zoom: float = 2.0, zoom_prob: float = 0.5, flip: bool = True):
        if max_pad < 0 or max_zoom < 1 or not 0 <= zoom_prob <= 1:
            raise ValueError(f"FeatUpJitter: need max_pad >= 0, max_zoom >= 1, 0 <= zoom_prob <= 1; got "
                             f"{max_pad}, {max_zoom}, {zoom_prob}")
        self.max_pad, self.max_zoom = int(max_pad), float(max_zoom)
        self.zoom_prob, self.flip = float(zoom_prob), bool(flip)

    def sample(self, x: torch.Tensor) -> JitterParams:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        flip = self.flip and bool(torch.rand(()) < 0.5)
        zoom = 1.0 + (self.max_zoom - 1.0) * float(torch.rand(())) if bool(torch.rand(()) < self.zoom_prob) else 1.0
        room_h = int((h + 2 * self.max_pad) * zoom) - h + 1
        room_w = int((w + 2 * self.max_pad) * zoom) - w + 1
        top = int(torch.randint(0, room_h, ()))
        left = int(torch.randint(0, room_w, ()))
        return JitterParams((h, w), zoom, top, left, flip)

    def apply(self, x: torch.Tensor, view: JitterParams) -> Tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        ry, rx = h / view.hw[0], w / view.hw[1]
        pad = min(round(self.max_pad * min(ry, rx)), h - 1, w - 1)  # reflect needs pad < size (tiny maps)
        inside = self._view(x.new_ones(1, 1, h, w), view, pad, "constant", ry, rx)
        return self._view(x, view, pad, "reflect", ry, rx), inside.expand(x.shape[0], 1, h, w)

    @staticmethod
    def _view(x: torch.Tensor, view: JitterParams, pad: int, mode: str, ry: float, rx: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = F.pad(x, [pad] * 4, mode=mode) if pad else x
        if view.zoom > 1.0:
            out = F.interpolate(out, scale_factor=view.zoom, mode="bilinear", align_corners=False)
        top = min(round(view.top * ry), out.shape[-2] - h)
        left = min(round(view.left * rx), out.shape[-1] - w)
        out = out[..., top:top + h, left:left + w]
        return out.flip(-1) if view.flip else out

    def __repr__(self) -> str:
        return (f"FeatUpJitter(max_pad={self.max_pad}, max_zoom={self.max_zoom}, zoom_prob={self.zoom_prob}, "
                f"flip={self.flip})")
