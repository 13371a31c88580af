"""FeatSharp's views for multi-view training (the release's jitters), with validity masks.

A training image first gets ONE random zoom-in and crop shared by all its views
(:meth:`FeatSharpJitter.shared_view`: zoom U(1, ``max_zoom``), the window anywhere inside the
image). Each view is then a small homography of that picture (:meth:`FeatSharpJitter.__call__`):
zoom log-uniform in [``min_zoom``, 1 / ``min_zoom``], rotation within +-``max_rotate_deg``,
perspective terms of magnitude U(``min_perspective``, ``max_perspective``) with random signs,
no flip. :meth:`FeatSharpJitter.warp` applies a homography to any map (image or features) with
bilinear ``grid_sample``, ``align_corners=True`` coordinates (-1 and 1 are the corner pixel
centres at every resolution, so the same matrix warps an image and its feature map alike) and
reflection padding, and returns the validity mask (1 where the source point lies inside).
All randomness comes from the global torch RNG (re-seeded every training step by the loop).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from ..registry import TRANSFORMS

__all__ = ["FeatSharpJitter"]


@TRANSFORMS.register_module()
class FeatSharpJitter:
    """Args:
        max_zoom: the shared zoom-in is U(1, max_zoom) (2 as released).
        min_zoom: per-view zoom is log-uniform in [min_zoom, 1 / min_zoom] (0.95).
        max_rotate_deg: per-view rotation within +- this (5).
        min_perspective, max_perspective: per-view perspective magnitudes (0.01 .. 0.05).
    """

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

    def __call__(self, n: int) -> torch.Tensor:
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

    @staticmethod
    def warp(x: torch.Tensor, hmat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Warp (B, C, H, W) by (B, 3, 3) homographies -> (warped (B, C, H, W), valid (B, 1, H, W) in {0, 1})."""
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, dtype=torch.float64)
        xs = torch.linspace(-1, 1, w, dtype=torch.float64)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts = torch.stack([xx, yy, torch.ones_like(xx)], -1)  # (H, W, 3)
        src = torch.einsum("nij,hwj->nhwi", hmat.double().cpu(), pts)
        grid = src[..., :2] / src[..., 2:]
        valid = (grid.abs() <= 1 + 1e-6).all(-1)[:, None]
        grid = grid.to(device=x.device, dtype=x.dtype)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        return out, valid.to(device=x.device, dtype=x.dtype)

    def __repr__(self) -> str:
        return (f"FeatSharpJitter(max_zoom={self.max_zoom}, min_zoom={self.min_zoom}, max_rotate_deg="
                f"{self.max_rotate_deg}, perspective={self.min_perspective}..{self.max_perspective})")
