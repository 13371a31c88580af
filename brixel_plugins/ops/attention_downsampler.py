"""FeatUp's learned attention downsampler: high-res map -> low-res map by a learned softmax
pooling over a window around each low-res cell (the multi-view consistency loss of FeatUp and
FeatSharp).

For the window of low-res cell l (``kernel_size`` x ``kernel_size`` high-res pixels, stride
``factor``, ``padding`` zeros around the map that never take part) the weights are
``softmax_n(saliency(x_n) * w_n + b_n)``: a per-pixel saliency (dropout + Linear C->1 of the
feature) modulated by a learned per-window-position scale ``w`` and bias ``b``. Options of the
two releases: a Gaussian blur of the map before pooling (``blur_size``, ``blur_sigma``),
logit dropout (in training, each cell's saliency logits are zeroed with probability
``logit_dropout``, falling back to the position prior), and noise in ``w``'s init
(``1 + init_noise * N(0, 1)``). The saliency Linear and ``b`` start at zero, so at init the
downsampler is average pooling (of the blurred map, if blurred).

FeatSharp's: ``kernel_size=9, padding=4, blur_size=5, blur_sigma=1, logit_dropout=0.2,
init_noise=0.01, dropout=0``, stride u.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionDownsampler", "gaussian_blur"]


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Depthwise ``size`` x ``size`` Gaussian blur (normalised, reflect padding) of (B, C, H, W)."""
    r = size // 2
    t = torch.arange(size, device=x.device, dtype=torch.float32) - r
    g = torch.exp(-t.square() / (2 * float(sigma) ** 2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


class AttentionDownsampler(nn.Module):
    """``forward(x (B, C, f*h, f*w)) -> (B, C, h, w)``.

    Args:
        dim: channels C.
        factor: stride f (the low-res cell size).
        kernel_size: pooling window k (default f).
        padding: zero padding p around the map; default (k - f) / 2 (k - f must then be even).
            The output must come out at h x w: (f*h + 2p - k) // f + 1 == h.
        dropout: dropout on the features fed to the saliency layer.
        blur_size, blur_sigma: Gaussian blur of the map before pooling (0: none).
        logit_dropout: probability of zeroing a cell's saliency logits in training.
        init_noise: std of the noise in ``w``'s init around 1.
    """

    def __init__(self, dim: int, factor: int, kernel_size: Optional[int] = None, dropout: float = 0.1,
                 padding: Optional[int] = None, blur_size: int = 0, blur_sigma: float = 1.0,
                 logit_dropout: float = 0.0, init_noise: float = 0.0):
        super().__init__()
        kernel_size = int(factor) if kernel_size is None else int(kernel_size)
        if padding is None:
            if kernel_size < factor or (kernel_size - factor) % 2:
                raise ValueError(f"kernel_size must be >= factor with an even difference, got {kernel_size} for "
                                 f"{factor} (or give padding)")
            padding = (kernel_size - factor) // 2
        if not 0 <= padding < kernel_size:
            raise ValueError(f"padding must be in [0, kernel_size), got {padding} for kernel_size {kernel_size}")
        if blur_size and blur_size % 2 == 0:
            raise ValueError(f"blur_size must be odd (or 0: no blur), got {blur_size}")
        if not 0 <= logit_dropout < 1:
            raise ValueError(f"logit_dropout must be in [0, 1), got {logit_dropout}")
        self.dim, self.factor, self.kernel_size, self.padding = int(dim), int(factor), kernel_size, int(padding)
        self.blur_size, self.blur_sigma = int(blur_size), float(blur_sigma)
        self.logit_dropout = float(logit_dropout)
        self.saliency = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))
        nn.init.zeros_(self.saliency[1].weight)
        nn.init.zeros_(self.saliency[1].bias)
        self.w = nn.Parameter(1 + float(init_noise) * torch.randn(kernel_size * kernel_size))
        self.b = nn.Parameter(torch.zeros(kernel_size * kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, c, hh, ww = x.shape
        f, k, pad = self.factor, self.kernel_size, self.padding
        if hh % f or ww % f:
            raise ValueError(f"input {hh}x{ww} is not a multiple of the factor {f}")
        h, w = hh // f, ww // f
        if (hh + 2 * pad - k) // f + 1 != h or (ww + 2 * pad - k) // f + 1 != w:
            raise ValueError(f"kernel_size {k} with padding {pad} and stride {f} does not map {hh}x{ww} to {h}x{w}")
        if self.blur_size:
            x = gaussian_blur(x, self.blur_size, self.blur_sigma)
        sal = self.saliency(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 1, H, W) per high-res pixel
        patches = F.unfold(x, k, padding=pad, stride=f).view(bsz, c, k * k, h * w)
        sal = F.unfold(sal, k, padding=pad, stride=f)  # (B, k*k, h*w)
        if self.training and self.logit_dropout:
            sal = sal * (torch.rand(bsz, 1, h * w, device=x.device) >= self.logit_dropout).to(sal.dtype)
        logits = sal * self.w.view(1, -1, 1) + self.b.view(1, -1, 1)
        if pad:
            inside = F.unfold(torch.ones(1, 1, hh, ww, device=x.device, dtype=x.dtype), k, padding=pad, stride=f) > 0
            logits = logits.masked_fill(~inside, float("-inf"))
        attn = torch.softmax(logits, dim=1)  # (B, k*k, h*w)
        return torch.einsum("bcnl,bnl->bcl", patches, attn).view(bsz, c, h, w)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, factor={self.factor}, kernel_size={self.kernel_size}, padding={self.padding}, "
                f"blur={self.blur_size}/{self.blur_sigma}, logit_dropout={self.logit_dropout}")
