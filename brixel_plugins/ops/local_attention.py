"""2D neighbourhood (local window) multi-head attention in pure PyTorch, any H and W.

Each query pixel attends to the k x k pixels centred on it (k odd). K and V are zero-padded by
k//2 and the neighbours that fall outside the image are masked out of the softmax (the centre
is always inside, so every softmax is well defined). This is unfold + masked softmax, but the
k*k neighbour maps are strided views of the padded K/V visited one offset at a time: memory is
(B, heads, k*k, H, W) for the logits plus a few (B, heads, H, W, d) maps, not k*k copies of K/V.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["local_attention", "LocalAttention2d", "neighbour_mask"]


def neighbour_mask(h: int, w: int, window: int, device=None) -> torch.Tensor:
    """(k*k, H, W) bool: True where neighbour ``i*k + j`` (offset (i-r, j-r)) of pixel (y, x) is inside."""
    r = window // 2
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    off = torch.arange(window, device=device) - r
    vy = ((ys[None, :] + off[:, None]) >= 0) & ((ys[None, :] + off[:, None]) < h)  # (k, H)
    vx = ((xs[None, :] + off[:, None]) >= 0) & ((xs[None, :] + off[:, None]) < w)  # (k, W)
    return (vy[:, None, :, None] & vx[None, :, None, :]).reshape(window * window, h, w)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 7,
                    bias: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention.

    Args:
        q, k, v: (B, heads, H, W, d).
        window: odd window size k.
        bias: optional (heads, k*k) additive logit bias per relative offset.
        scale: logit scale, default d ** -0.5.
    Returns:
        (B, heads, H, W, d): ``out[y,x] = sum_n softmax_n(q[y,x] . k[y+dy_n, x+dx_n] * scale + bias_n) v[...]``
        over in-image neighbours n only.
    """
    if window % 2 != 1 or window < 1:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    b, nh, h, w, d = q.shape
    r = window // 2
    scale = d ** -0.5 if scale is None else scale
    # pad the two spatial dims (dims 2, 3) of (B, heads, H, W, d) with zeros; masked below anyway
    kp = F.pad(k, (0, 0, r, r, r, r))
    vp = F.pad(v, (0, 0, r, r, r, r))
    offsets = [(i, j) for i in range(window) for j in range(window)]
    logits = torch.stack([(q * kp[:, :, i:i + h, j:j + w]).sum(-1) for i, j in offsets], dim=2)
    logits = logits * scale  # (B, heads, k*k, H, W)
    if bias is not None:
        logits = logits + bias.to(logits.dtype).view(1, nh, window * window, 1, 1)
    mask = neighbour_mask(h, w, window, q.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    attn = torch.softmax(logits, dim=2)
    out = None
    for n, (i, j) in enumerate(offsets):
        nb = vp[:, :, i:i + h, j:j + w]
        a = attn[:, :, n, :, :, None]
        out = nb * a if out is None else out.addcmul_(nb, a)
    return out


class LocalAttention2d(nn.Module):
    """Multi-head neighbourhood attention on channels-last maps: (B, H, W, C) -> (B, H, W, C).

    qkv and output projections are Linear layers; ``rel_pos_bias`` adds a learned zero-initialised
    (heads, k*k) logit bias per relative offset.
    """

    def __init__(self, dim: int, num_heads: int, window: int = 7, qkv_bias: bool = True,
                 rel_pos_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window % 2 != 1:
            raise ValueError(f"window must be odd, got {window}")
        self.dim, self.num_heads, self.window = dim, num_heads, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_bias = nn.Parameter(torch.zeros(num_heads, window * window)) if rel_pos_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).view(b, h, w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, heads, H, W, d)
        out = local_attention(q, k, v, self.window, self.rel_pos_bias)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, window={self.window}"
