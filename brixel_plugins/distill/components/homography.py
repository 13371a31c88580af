"""Homography views for multi-view training: the view samplers (ours and FeatSharp's release)
and the one warp that applies a view to an image or a feature map.

A view is a (3, 3) homography from the view's normalised coordinates ([-1, 1]) to the source's.
Two coordinate conventions are in use, each a :func:`warp` option named after its user:

- ``align_corners=False``, border padding (:class:`HomographyJitter`, our multi-view default):
  -1 and 1 are the outer pixel edges;
- ``align_corners=True``, reflection padding (:class:`FeatSharpJitter`, FeatSharp's release):
  -1 and 1 are the corner pixel centres at every resolution, so the same matrix warps an image
  and its feature map alike.

Both are view jitters (:class:`~.jitter.ViewJitter`): ``sample(x)`` draws one view per image of the
batch ``x``, (B, 3, 3) on its device, and ``apply(y, hmat)`` warps with the sampler's convention. All
randomness comes from the global torch RNG (re-seeded every training step by the loop).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..registry import TRANSFORMS
from .jitter import ViewJitter

__all__ = ["homography_grid", "warp", "random_homographies", "HomographyViews", "HomographyJitter",
           "FeatSharpJitter"]


def homography_grid(hmat: torch.Tensor, size: Tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Sampling grid (n, H, W, 2) for ``F.grid_sample`` from (n, 3, 3) view->source maps, in
    ``hmat``'s dtype and on its device."""
    def axis(n: int) -> torch.Tensor:
        if align_corners:
            return torch.linspace(-1, 1, n, dtype=hmat.dtype)
        return (torch.arange(n, dtype=hmat.dtype) + 0.5) / n * 2 - 1

    yy, xx = torch.meshgrid(axis(size[0]), axis(size[1]), indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).to(hmat.device)  # (H, W, 3)
    src = torch.einsum("nij,hwj->nhwi", hmat, pts)
    return src[..., :2] / src[..., 2:].clamp_min(1e-6)


def warp(x: torch.Tensor, hmat: torch.Tensor, align_corners: bool = False, padding_mode: str = "border",
         mode: str = "bilinear") -> Tuple[torch.Tensor, torch.Tensor]:
    """Warp (B, C, H, W) by (B, 3, 3) view->source homographies at its own resolution ->
    (warped (B, C, H, W), valid (B, 1, H, W): 1 where the source point lies inside, else 0)."""
    grid = homography_grid(hmat, x.shape[-2:], align_corners)
    valid = (grid.abs() <= 1 + 1e-6).all(-1)[:, None]
    out = F.grid_sample(x, grid.to(device=x.device, dtype=x.dtype), mode=mode, padding_mode=padding_mode,
                        align_corners=align_corners)
    return out, valid.to(device=x.device, dtype=x.dtype)


def random_homographies(n: int, max_zoom: float = 1.8, max_shift: float = 1.0, max_rotate_deg: float = 10.0,
                        max_perspective: float = 0.1, flip: bool = True,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, 3, 3) float32 view->source maps: a random zoom-in (1..max_zoom), crop position inside
    the image (``max_shift`` of the room left), small rotation, small perspective, flip."""
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    zoom = u(1.0, max_zoom)
    scale = 1.0 / zoom  # the view covers 1/zoom of the source
    room = (1 - scale) * max_shift
    tx, ty = u(-1, 1) * room, u(-1, 1) * room
    th = u(-1, 1) * math.radians(max_rotate_deg)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    c, s = torch.cos(th), torch.sin(th)
    m = torch.zeros(n, 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = scale * c * sx, -scale * s, tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = scale * s * sx, scale * c, ty
    m[:, 2, 0], m[:, 2, 1], m[:, 2, 2] = u(-1, 1) * max_perspective, u(-1, 1) * max_perspective, 1.0
    return m


class HomographyViews(ViewJitter):
    """A view jitter whose views are homographies: ``homographies(n) -> (n, 3, 3)``, warped by
    :func:`warp` with the sampler's ``align_corners`` and ``padding_mode``."""

    align_corners: bool
    padding_mode: str

    def homographies(self, n: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, x: torch.Tensor) -> torch.Tensor:
        return self.homographies(x.shape[0]).to(x.device)

    def apply(self, x: torch.Tensor, view: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return warp(x, view, self.align_corners, self.padding_mode)


@TRANSFORMS.register_module()
class HomographyJitter(HomographyViews):
    """Our multi-view default: (n, 3, 3) views from :func:`random_homographies` (zoom-in
    1..``max_zoom``, crop position, rotation within +-``max_rotate_deg``, perspective within
    +-``max_perspective``, optional horizontal flip); warps with ``align_corners=False`` and
    border padding."""

    align_corners, padding_mode = False, "border"

    def __init__(self, max_zoom: float = 1.8, max_shift: float = 1.0, max_rotate_deg: float = 10.0,
                 max_perspective: float = 0.1, flip: bool = True):
        self.kw = dict(max_zoom=float(max_zoom), max_shift=float(max_shift), max_rotate_deg=float(max_rotate_deg),
                       max_perspective=float(max_perspective), flip=bool(flip))

    def homographies(self, n: int) -> torch.Tensor:
        return random_homographies(n, **self.kw)

    def __repr__(self) -> str:
        return f"HomographyJitter({', '.join(f'{k}={v}' for k, v in self.kw.items())})"


@TRANSFORMS.register_module()
class FeatSharpJitter(HomographyViews):
    """FeatSharp's release views. A training image first gets ONE random zoom-in and crop shared by
    all its views (:meth:`shared_view`: zoom U(1, ``max_zoom``), the window anywhere inside the
    image). Each view is then a small homography of that picture (:meth:`sample`): zoom
    log-uniform in [``min_zoom``, 1 / ``min_zoom``], rotation within +-``max_rotate_deg``,
    perspective terms of magnitude U(``min_perspective``, ``max_perspective``) with random signs,
    no flip; float64. Warps with ``align_corners=True`` and reflection padding.

    Args:
        max_zoom: the shared zoom-in is U(1, max_zoom) (2 as released).
        min_zoom: per-view zoom is log-uniform in [min_zoom, 1 / min_zoom] (0.95).
        max_rotate_deg: per-view rotation within +- this (5).
        min_perspective, max_perspective: per-view perspective magnitudes (0.01 .. 0.05).
    """

    align_corners, padding_mode = True, "reflection"

    def __init__(self, max_zoom: float = 2.0, min_zoom: float = 0.95, max_rotate_deg: float = 5.0,
                 min_perspective: float = 0.01, max_perspective: float = 0.05):
        if max_zoom < 1 or not 0 < min_zoom <= 1 or not 0 <= min_perspective <= max_perspective:
            raise ValueError(f"FeatSharpJitter: need max_zoom >= 1, 0 < min_zoom <= 1 and 0 <= min_perspective <= "
                             f"max_perspective, got {max_zoom}, {min_zoom}, {min_perspective}, {max_perspective}")
        self.max_zoom, self.min_zoom = float(max_zoom), float(min_zoom)
        self.max_rotate_deg = float(max_rotate_deg)
        self.min_perspective, self.max_perspective = float(min_perspective), float(max_perspective)

    @staticmethod
    def _uniform(n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, dtype=torch.float64)

    def shared_view(self, image: torch.Tensor, size: int) -> torch.Tensor:
        """(B, 3, T, T) -> (B, 3, size, size): each image zoomed in by U(1, max_zoom) at a random
        position inside it (bilinear, align_corners=True), the picture all its views share."""
        b = image.shape[0]
        zoom = self._uniform(b, 1.0, self.max_zoom)
        room = 1 - 1 / zoom
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
        theta[:, 0, 2] = self._uniform(b, -1, 1) * room
        theta[:, 1, 2] = self._uniform(b, -1, 1) * room
        grid = F.affine_grid(theta.to(image), [b, image.shape[1], size, size], align_corners=True)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=True)

    def homographies(self, n: int) -> torch.Tensor:
        """(n, 3, 3) float64 homographies from a view's normalised coordinates to the shared picture's."""
        zoom = torch.exp(self._uniform(n, math.log(self.min_zoom), -math.log(self.min_zoom)))
        th = self._uniform(n, -1, 1) * math.radians(self.max_rotate_deg)
        persp = [self._uniform(n, self.min_perspective, self.max_perspective)
                 * torch.where(torch.rand(n) < 0.5, -1.0, 1.0).double() for _ in range(2)]
        c, s = torch.cos(th) / zoom, torch.sin(th) / zoom
        m = torch.zeros(n, 3, 3, dtype=torch.float64)
        m[:, 0, 0], m[:, 0, 1] = c, -s
        m[:, 1, 0], m[:, 1, 1] = s, c
        m[:, 2, 0], m[:, 2, 1], m[:, 2, 2] = persp[0], persp[1], 1.0
        return m

    def __repr__(self) -> str:
        return (f"FeatSharpJitter(max_zoom={self.max_zoom}, min_zoom={self.min_zoom}, max_rotate_deg="
                f"{self.max_rotate_deg}, perspective={self.min_perspective}..{self.max_perspective})")
