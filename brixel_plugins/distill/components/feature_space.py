"""The space a multi-view loss compares feature maps in."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS

__all__ = ["ChannelNorm"]


@MODELS.register_module()
class ChannelNorm(nn.Module):
    """FeatUp's feature space: LayerNorm over the channels of every pixel, no affine (the release
    wraps the backbone in a LayerNorm whose affine never enters its optimizer, so it stays the
    identity). ``(B, C, H, W) -> (B, C, H, W)``, float32."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().permute(0, 2, 3, 1)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
