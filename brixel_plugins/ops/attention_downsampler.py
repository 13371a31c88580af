"""FeatUp's learned attention downsampler: high-res map -> low-res map by a learned softmax
pooling over each low-res cell (used by the multi-view consistency loss, FeatUp/FeatSharp).

For a cell of ``factor x factor`` high-res pixels (or a larger centred ``kernel_size`` window)
the weights are ``softmax_n(saliency(x_n) * w_n + b_n)``: a per-pixel saliency (dropout +
Linear C->1 of the feature) modulated by a learned per-position scale ``w`` and bias ``b``.
The saliency Linear is zero-initialised and ``b`` starts at 0, so at init the downsampler is
exactly average pooling (a sane start for the loss); it learns to pick salient pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionDownsampler"]


class AttentionDownsampler(nn.Module):
    """``forward(x (B, C, H, W)) -> (B, C, H/factor, W/factor)`` (H, W multiples of ``factor``).

    Args:
        dim: channels C.
        factor: stride / cell size of the pooling.
        kernel_size: pooling window (>= factor, ``kernel_size - factor`` even); windows larger than
            the cell overlap their neighbours, centred on the cell; out-of-image pixels are masked.
        dropout: dropout on the features fed to the saliency layer.
    """

    def __init__(self, dim: int, factor: int, kernel_size: int = None, dropout: float = 0.1):
        super().__init__()
        kernel_size = factor if kernel_size is None else kernel_size
        if kernel_size < factor or (kernel_size - factor) % 2:
            raise ValueError(f"kernel_size must be >= factor with an even difference, got {kernel_size} for {factor}")
        self.dim, self.factor, self.kernel_size = dim, int(factor), int(kernel_size)
        self.saliency = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))
        nn.init.zeros_(self.saliency[1].weight)
        nn.init.zeros_(self.saliency[1].bias)
        self.w = nn.Parameter(torch.ones(kernel_size * kernel_size))
        self.b = nn.Parameter(torch.zeros(kernel_size * kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, c, hh, ww = x.shape
        f, k = self.factor, self.kernel_size
        if hh % f or ww % f:
            raise ValueError(f"input {hh}x{ww} is not a multiple of the factor {f}")
        h, w = hh // f, ww // f
        pad = (k - f) // 2
        # (B, 1, H, W) saliency per high-res pixel
        sal = self.saliency(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        patches = F.unfold(x, k, padding=pad, stride=f).view(bsz, c, k * k, h * w)
        sal = F.unfold(sal, k, padding=pad, stride=f)  # (B, k*k, h*w)
        logits = sal * self.w.view(1, -1, 1) + self.b.view(1, -1, 1)
        if pad:
            inside = F.unfold(torch.ones(1, 1, hh, ww, device=x.device, dtype=x.dtype), k, padding=pad, stride=f) > 0
            logits = logits.masked_fill(~inside, float("-inf"))
        attn = torch.softmax(logits, dim=1)  # (B, k*k, h*w)
        return torch.einsum("bcnl,bnl->bcl", patches, attn).view(bsz, c, h, w)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, factor={self.factor}, kernel_size={self.kernel_size}"
