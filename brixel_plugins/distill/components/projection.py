"""Random low-dimensional projections of feature maps (FeatUp's release compares 30-d random
projections of the features, a new one every view)."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import MODELS

__all__ = ["RandomProjection"]


@MODELS.register_module()
class RandomProjection(nn.Module):
    """``sample(batch, channels, device) -> (B, C, dim)``: Gaussian matrices, one per image, each
    column scaled to unit length; ``forward(x (B, C, H, W), proj) -> (B, dim, H, W)``. Draws
    from the global torch RNG (re-seeded every training step)."""

    def __init__(self, dim: int = 30):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"RandomProjection: dim must be >= 1, got {dim!r}")
        self.dim = int(dim)

    def sample(self, batch: int, channels: int, device=None) -> torch.Tensor:
        proj = torch.randn(batch, channels, self.dim, device=device)
        return proj / proj.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        if proj.shape[:2] != x.shape[:2]:
            raise ValueError(f"RandomProjection: a (B, C, dim) = {tuple(proj.shape)} projection does not fit "
                             f"maps {tuple(x.shape)}")
        return torch.einsum("bchw,bcd->bdhw", x.float(), proj)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
