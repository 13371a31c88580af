"""The learned attention downsampler of multi-view training (FeatUp's and FeatSharp's):
high-res map -> low-res map by a learned softmax pooling over a window around each low-res cell.

For the window of low-res cell l (``kernel_size`` x ``kernel_size`` high-res pixels, stride
``factor``, ``padding`` zeros around the map that never take part) the weights are
``softmax_n(saliency(x_n) * w_n + b_n)``: a per-pixel saliency (dropout + Linear C->1 of the
feature) modulated by a learned per-window-position scale ``w`` and bias ``b``. Options the two
releases set differently: a Gaussian blur of the map before pooling (``blur_size``,
``blur_sigma``), logit dropout (in training, each cell's saliency logits are zeroed with
probability ``logit_dropout``, falling back to the position prior), noise in the init
(``init_noise``) and which parameters start where (``init``, named after the release):

- ``init='featsharp'``: the saliency Linear and ``b`` start at zero, ``w`` at ``1 + init_noise
  * N(0, 1)``: at init the downsampler is average pooling (of the blurred map, if blurred).
  FeatSharp's release: ``kernel_size=9, padding=4, blur_size=5, blur_sigma=1, logit_dropout=0.2,
  init_noise=0.01, dropout=0``, stride u (:data:`FEATSHARP`).
- ``init='featup'``: the saliency Linear at PyTorch's default init, ``w`` and ``b`` at 1 and 0
  plus ``init_noise * N(0, 1)`` each (so the pooling is not average pooling at the start).
  FeatUp's release (JBU): kernel = stride = factor, ``blur_size=5, blur_sigma=1, dropout=0.2,
  logit_dropout=0.2, init_noise=0.01`` (:data:`FEATUP`).

Registered for configs: ``downsampler=dict(type='AttentionDownsampler', **FEATUP)`` (or
``**FEATSHARP``), built with ``dim`` and ``factor`` by the objective.

The saliency is computed once per high-res pixel and then cut into windows. FeatUp's release
computes it per window; its windows do not overlap, so the numbers are the same (in training
its input dropout draws the same distribution, in another order).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS

__all__ = ["AttentionDownsampler", "gaussian_blur", "FEATSHARP", "FEATUP"]

INITS = ("featsharp", "featup")


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Depthwise ``size`` x ``size`` Gaussian blur (normalised) of (B, C, H, W), reflect padding
    (replicate for maps too small to reflect)."""
    r = size // 2
    t = torch.arange(size, device=x.device, dtype=torch.float32) - r
    g = torch.exp(-t.square() / (2 * float(sigma) ** 2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


@MODELS.register_module()
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
        init_noise: std of the noise in the init of ``w`` (and ``b`` with ``init='featup'``).
        init: ``'featsharp'`` (average pooling at the start) or ``'featup'`` (see the module docstring).
    """

    def __init__(self, dim: int, factor: int, kernel_size: Optional[int] = None, dropout: float = 0.1,
                 padding: Optional[int] = None, blur_size: int = 0, blur_sigma: float = 1.0,
                 logit_dropout: float = 0.0, init_noise: float = 0.0, init: str = "featsharp"):
        super().__init__()
        if int(factor) < 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
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
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.dim, self.factor, self.kernel_size, self.padding = int(dim), int(factor), kernel_size, int(padding)
        self.blur_size, self.blur_sigma = int(blur_size), float(blur_sigma)
        self.logit_dropout, self.init = float(logit_dropout), init
        self.saliency = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))
        k2 = kernel_size * kernel_size
        if init == "featsharp":
            nn.init.zeros_(self.saliency[1].weight)
            nn.init.zeros_(self.saliency[1].bias)
        self.w = nn.Parameter(1 + float(init_noise) * torch.randn(k2))
        self.b = nn.Parameter(float(init_noise) * torch.randn(k2) if init == "featup" else torch.zeros(k2))

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
                f"blur={self.blur_size}/{self.blur_sigma}, logit_dropout={self.logit_dropout}, init={self.init!r}")


# the two releases' settings (kernel and stride follow the factor unless given)
FEATSHARP = dict(kernel_size=9, padding=4, blur_size=5, blur_sigma=1.0, logit_dropout=0.2, init_noise=0.01,
                 dropout=0.0, init="featsharp")
FEATUP = dict(blur_size=5, blur_sigma=1.0, dropout=0.2, logit_dropout=0.2, init_noise=0.01, init="featup")
