"""Geometric data policies of the authors' releases: how a training image of any size becomes the
``size x size`` picture the objective receives (``ImageFolderDataset(crop=dict(type=...))``).

Each policy is a registered ``TRANSFORMS`` component, deterministic (a pure function of the image),
``policy(im: PIL.Image, size) -> PIL.Image (size x size)``, built on torchvision's own
functional ops as the releases are. :meth:`plan` returns the geometry without touching pixels
(what the tests check against hand-computed values).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torchvision.transforms.functional as TF

from .registry import TRANSFORMS

__all__ = ["BrixelReleaseCanvas", "SquashResize", "ShortSideCentreCrop"]


def _centre_offset(side: int, crop: int) -> int:
    """torchvision's centre-crop offset: int(round((side - crop) / 2)) (round half to even)."""
    return int(round((side - crop) / 2.0))


@TRANSFORMS.register_module()
class BrixelReleaseCanvas:
    """BRIXEL's release crop to ``size`` (1024 there):

    1. **canvas**: each side shorter than ``size`` is black-padded to ``size`` on its own, the
       photo centred (``pad // 2`` before, the rest after); a side already >= ``size`` is untouched.
       A 500x375 photo becomes a 1024x1024 canvas with the photo at native scale (82% black).
    2. **cover**: resized by ``scale = max(size / H, size / W)`` to ``ceil(H * scale) x ceil(W * scale)``
       (bilinear, antialiased). After step 1 both sides are >= ``size``, so ``scale <= 1``:
       never enlarged.
    3. **crop**: the centred ``size x size`` window.
    """

    def plan(self, w: int, h: int, size: int) -> Dict[str, Tuple]:
        """Geometry for a ``w x h`` image: ``canvas`` (W, H), ``paste`` (left, top) of the photo
        on it, ``scale``, ``resized`` (W, H) and ``crop`` (left, top) of the final window."""
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        cw, ch = w + pad_w, h + pad_h
        scale = max(size / ch, size / cw)
        rw, rh = int(math.ceil(cw * scale)), int(math.ceil(ch * scale))
        return dict(canvas=(cw, ch), paste=(pad_w // 2, pad_h // 2), scale=scale, resized=(rw, rh),
                    crop=(_centre_offset(rw, size), _centre_offset(rh, size)))

    def __call__(self, im, size: int):
        p = self.plan(im.width, im.height, size)
        (cw, ch), (left, top) = p["canvas"], p["paste"]
        if (cw, ch) != im.size:
            im = TF.pad(im, [left, top, cw - im.width - left, ch - im.height - top], fill=0)
        rw, rh = p["resized"]
        if (rw, rh) != im.size:
            im = TF.resize(im, [rh, rw], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(im, [size, size])

    def __repr__(self) -> str:
        return "BrixelReleaseCanvas()"


@TRANSFORMS.register_module()
class SquashResize:
    """LiFT's release: ``Resize((size, size))``, bilinear, the aspect ratio squashed (nothing cropped)."""

    def plan(self, w: int, h: int, size: int) -> Dict[str, Tuple]:
        return dict(resized=(size, size), scale=(size / w, size / h))

    def __call__(self, im, size: int):
        return TF.resize(im, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)

    def __repr__(self) -> str:
        return "SquashResize()"


@TRANSFORMS.register_module()
class ShortSideCentreCrop:
    """FeatUp's release: ``Resize(size)`` (short side to ``size``, long side ``int(size * long / short)``,
    bilinear, enlarging small images) then ``CenterCrop(size)``."""

    def plan(self, w: int, h: int, size: int) -> Dict[str, Tuple]:
        if w <= h:
            rw, rh = size, int(size * h / w)
        else:
            rw, rh = int(size * w / h), size
        return dict(resized=(rw, rh), crop=(_centre_offset(rw, size), _centre_offset(rh, size)))

    def __call__(self, im, size: int):
        im = TF.resize(im, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(im, [size, size])

    def __repr__(self) -> str:
        return "ShortSideCentreCrop()"
