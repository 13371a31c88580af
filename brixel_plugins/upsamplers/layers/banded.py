"""Maps too large to hold twice, computed in bands of rows: GroupNorm statistics gathered over the whole
map first (float64), then applied band by band, and a residual block updated in place (AnyUp, JAFAR)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layout import pointwise


def residual_banded_(x: torch.Tensor, rows: int, gn1: nn.GroupNorm, conv1: nn.Conv2d, gn2: nn.GroupNorm,
                     conv2: nn.Conv2d) -> torch.Tensor:
    """``x += conv2(SiLU(gn2(conv1(SiLU(gn1(x))))))`` (1x1 convolutions) in place, ``rows`` rows at a time
    (AnyUp's and JAFAR's residual blocks at large sizes)."""
    stats1 = group_stats(x, gn1.num_groups, rows)

    def inner(band: torch.Tensor) -> torch.Tensor:
        return pointwise(conv1, F.silu(group_norm_with(band, stats1, gn1)))

    stats2 = group_stats(x, gn2.num_groups, rows, inner)
    for r in range(0, x.shape[-2], rows):
        band = x[:, :, r:r + rows]
        band += pointwise(conv2, F.silu(group_norm_with(inner(band), stats2, gn2)))
    return x


def group_stats(x: torch.Tensor, groups: int, rows: int, fn=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, group) mean and variance of ``fn(x)`` (default ``x``), (B, G) each, gathered over
    bands of ``rows`` rows in float64 (the population variance, as GroupNorm takes it)."""
    total = total_sq = None
    b, c = x.shape[:2]
    for r in range(0, x.shape[-2], rows):
        band = x[:, :, r:r + rows]
        band = (band if fn is None else fn(band)).permute(0, 2, 3, 1).reshape(b, -1, groups, c // groups).double()
        s, sq = band.sum((1, 3)), band.square().sum((1, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    n = x[0].numel() // groups
    mean = total / n
    return mean, (total_sq / n - mean.square()).clamp_min(0)


def group_norm_with(x: torch.Tensor, stats: Tuple[torch.Tensor, torch.Tensor], gn: nn.GroupNorm) -> torch.Tensor:
    """``gn`` (affine or not) applied to ``x`` (B, C, r, W), a band of a map whose group statistics are ``stats``."""
    mean, var = stats
    b, c, r, w = x.shape
    g = gn.num_groups
    rstd = (var + gn.eps).rsqrt()
    pixels = x.permute(0, 2, 3, 1).reshape(b, -1, g, c // g)  # a view of a channels-last band
    y = ((pixels - mean.to(x.dtype)[:, None, :, None]) * rstd.to(x.dtype)[:, None, :, None]).reshape(b, r, w, c)
    return (y if gn.weight is None else torch.addcmul(gn.bias, y, gn.weight)).permute(0, 3, 1, 2)
