"""FeatUp's learned attention downsampler (JBU release): blur, then a learned softmax pooling
over each ``factor x factor`` cell."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS

__all__ = ["FeatUpAttentionDownsampler", "gaussian_blur"]


def gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Depthwise ``size x size`` Gaussian blur (normalised, reflect-padded): (B, C, H, W) -> same."""
    r = size // 2
    t = torch.arange(size, device=x.device, dtype=x.dtype) - r
    g = torch.exp(-t.square() / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    out = F.pad(x, [r, r, r, r], mode="reflect")
    out = F.conv2d(out, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(out, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


@MODELS.register_module()
class FeatUpAttentionDownsampler(nn.Module):
    """``forward(x (B, C, H, W)) -> (B, C, H/factor, W/factor)``.

    The map is blurred (``blur_size``, ``blur_sigma``); each ``factor x factor`` cell (kernel =
    stride = factor: 16 / 16 for FeatUp's 16x) is pooled with softmax weights
    ``softmax_n(mask * saliency(x_n) * w_n + b_n)``, saliency = Linear C -> 1 of the dropped-out
    (``dropout``) feature, ``w`` / ``b`` learned per cell position, initialised to 1 / 0 plus
    ``init_noise`` x N(0, 1), the Linear at PyTorch's default init (so the pooling is not average
    pooling at the start). In training, the saliency logits of a random ``logit_mask`` fraction of
    the cells are zeroed (their pooling falls back to ``softmax(b)``).
    """

    def __init__(self, dim: int, factor: int, blur_size: int = 5, blur_sigma: float = 1.0, dropout: float = 0.2,
                 logit_mask: float = 0.2, init_noise: float = 0.01):
        super().__init__()
        if int(factor) < 1:
            raise ValueError(f"FeatUpAttentionDownsampler: factor must be >= 1, got {factor!r}")
        self.dim, self.factor = int(dim), int(factor)
        self.blur_size, self.blur_sigma = int(blur_size), float(blur_sigma)
        self.logit_mask = float(logit_mask)
        self.saliency = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))
        k2 = self.factor * self.factor
        self.w = nn.Parameter(torch.ones(k2) + init_noise * torch.randn(k2))
        self.b = nn.Parameter(torch.zeros(k2) + init_noise * torch.randn(k2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, c, hh, ww = x.shape
        f = self.factor
        if hh % f or ww % f:
            raise ValueError(f"FeatUpAttentionDownsampler: input {hh}x{ww} is not a multiple of the factor {f}")
        h, w = hh // f, ww // f
        if self.blur_size > 1:
            x = gaussian_blur(x, self.blur_size, self.blur_sigma)
        patches = F.unfold(x, f, stride=f).view(bsz, c, f * f, h * w)  # (B, C, k*k, cells)
        logits = self.saliency(patches.permute(0, 3, 2, 1)).squeeze(-1)  # (B, cells, k*k)
        if self.training and self.logit_mask > 0:
            keep = torch.rand(bsz, h * w, 1, device=x.device) >= self.logit_mask
            logits = logits * keep
        attn = torch.softmax(logits * self.w + self.b, dim=-1)
        return torch.einsum("bcnl,bln->bcl", patches, attn).view(bsz, c, h, w)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, factor={self.factor}, blur={self.blur_size}x{self.blur_size} sigma {self.blur_sigma}, "
                f"logit_mask={self.logit_mask}")
