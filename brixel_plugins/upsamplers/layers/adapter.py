"""ViT-Adapter parts (Chen et al. ICLR 2023) that BRIXEL and BRIXEL-lean build on: the conv stem's
blocks, the extractor (queries read backbone tokens by deformable cross-attention, then a ConvFFN)
and the adapter's weight init."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from timm.layers import DropPath
from torch import nn

from .deform_attn import MSDeformAttn
from .layout import to_map, to_tokens
from .norm import LN_EPS

__all__ = ["ConvFFN", "DWConv", "Extractor", "conv_bn_relu", "init_weights"]


def conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DWConv(nn.Module):
    """Depthwise 3x3 applied separately to each query level: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        if len(shapes) == 1:  # one level: no split and concatenation (copies)
            return to_tokens(self.dwconv(to_map(x, shapes[0])))
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([to_tokens(self.dwconv(to_map(p, hw))) for p, hw in zip(parts, shapes)], 1)


class ConvFFN(nn.Module):
    """Linear D->hidden, per-level depthwise 3x3, GELU, linear hidden->D."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Extractor(nn.Module):
    """Queries read backbone tokens: ``q + attn(LN q, LN feat)``, then ``+ drop_path(FFN(LN q))``.

    Shapes: ``q (B, Lq, D)``, ``feat (B, S, D)`` -> ``(B, Lq, D)``; ``feat`` holds ``n_levels``
    maps flattened and concatenated, of sizes ``feat_shapes`` (a list of ``(h, w)``, ``S = sum h*w``).
    """

    def __init__(self, dim: int, n_heads: int = 16, n_points: int = 4, ratio: float = 0.5,
                 ffn_ratio: float = 0.25, drop_path: float = 0.3, n_levels: int = 1):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MSDeformAttn(dim, n_levels=n_levels, n_heads=n_heads, n_points=n_points, ratio=ratio)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, q: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor,
                feat_shapes: Sequence[Tuple[int, int]], q_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        q = q + self.attn(self.query_norm(q), ref, self.feat_norm(feat), feat_shapes)
        return q + self.drop_path(self.ffn(self.ffn_norm(q), q_shapes))


def init_weights(m: nn.Module) -> None:
    """Init of the adapter (ViT-Adapter style): truncated-normal linears, He-normal (fan-out) convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
