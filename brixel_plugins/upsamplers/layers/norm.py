"""Normalisation layers of the upsamplers' maps."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LN_EPS", "LayerNorm2d"]

LN_EPS = 1e-6


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B,C,H,W) map (key ``.ln`` as in the release; eps 1e-6)."""

    def __init__(self, dim: int, eps: float = LN_EPS):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
