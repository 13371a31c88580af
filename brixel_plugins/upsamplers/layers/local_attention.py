"""2D neighbourhood (local window) multi-head attention in pure PyTorch, any H and W, with
FeatSharp's fixed axis-wise ALiBi position bias.

Each query pixel attends to the k x k pixels centred on it (k odd); the window is cut at the
image borders (neighbours outside the image are left out of the softmax, the window is not
shifted inwards). Two paths compute the same thing:

- :func:`local_attention` (everywhere): K and V are zero-padded by k//2 and the k*k neighbour
  maps are strided views of the padded maps visited one offset at a time, so memory is
  (B, heads, k*k, H, W) for the logits plus a few (B, heads, H, W, d) maps.
- :func:`flex_local_attention` (where ``torch.nn.attention.flex_attention`` exists): the same
  window as a block-sparse mask and the bias as a score modification; compiled on CUDA.

Position bias (:func:`alibi_bias`): head h has slope ``1 / 2**floor((h + 2) / 2)``; even heads
add ``-slope * |dy|``, odd heads ``-slope * |dx|`` (pairs of heads share a slope, one per axis).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["alibi_slopes", "alibi_bias", "local_attention", "flex_local_attention", "flex_attention_available",
           "LocalAttention2d", "neighbour_mask"]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """(heads,) float64: ``1 / 2**floor((h + 2) / 2)`` for head h = 0, 1, ...: 1/2, 1/2, 1/4, 1/4, ..."""
    return torch.tensor([2.0 ** -((h + 2) // 2) for h in range(num_heads)], dtype=torch.float64)


def alibi_bias(num_heads: int, window: int) -> torch.Tensor:
    """(heads, k*k) float32 logit bias per window offset ``i*k + j`` = (dy, dx) = (i - r, j - r):
    ``-slope_h * |dy|`` for even h, ``-slope_h * |dx|`` for odd h."""
    r = window // 2
    d = (torch.arange(window, dtype=torch.float64) - r).abs()
    dy = d[:, None].expand(window, window).reshape(-1)
    dx = d[None, :].expand(window, window).reshape(-1)
    slopes = alibi_slopes(num_heads)[:, None]
    even = (torch.arange(num_heads) % 2 == 0)[:, None]
    return torch.where(even, -slopes * dy, -slopes * dx).float()


def neighbour_mask(h: int, w: int, window: int, device=None) -> torch.Tensor:
    """(k*k, H, W) bool: True where neighbour ``i*k + j`` (offset (i-r, j-r)) of pixel (y, x) is inside."""
    r = window // 2
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    off = torch.arange(window, device=device) - r
    vy = ((ys[None, :] + off[:, None]) >= 0) & ((ys[None, :] + off[:, None]) < h)  # (k, H)
    vx = ((xs[None, :] + off[:, None]) >= 0) & ((xs[None, :] + off[:, None]) < w)  # (k, W)
    return (vy[:, None, :, None] & vx[None, :, None, :]).reshape(window * window, h, w)


def _check_window(window: int) -> None:
    if window % 2 != 1 or window < 1:
        raise ValueError(f"window must be a positive odd integer, got {window}")


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 7,
                    bias: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Neighbourhood attention, the reference path.

    Args:
        q, k: (B, heads, H, W, d_qk); v: (B, heads, H, W, d_v) (d_v may differ from d_qk).
        window: odd window size k.
        bias: optional (heads, k*k) additive logit bias per relative offset.
        scale: logit scale, default d_qk ** -0.5.
    Returns:
        (B, heads, H, W, d_v): ``out[y,x] = sum_n softmax_n(q[y,x] . k[y+dy_n, x+dx_n] * scale + bias_n) v[...]``
        over in-image neighbours n only.
    """
    _check_window(window)
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


def flex_attention_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int = 7,
                         bias: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                         compiled: Optional[bool] = None) -> torch.Tensor:
    """:func:`local_attention` by ``flex_attention`` (same arguments and result). ``compiled``
    (default: on CUDA) runs the compiled kernel; uncompiled it is the dense reference of
    ``flex_attention``, for checking only. q, k and v must share the head dim (pad v and slice
    the result otherwise)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    _check_window(window)
    b, nh, h, w, d = q.shape
    r = window // 2
    n = h * w
    scale = d ** -0.5 if scale is None else scale
    table = (torch.zeros(nh, window * window, device=q.device) if bias is None
             else bias.to(device=q.device, dtype=torch.float32))

    def inside(b_, h_, qi, ki):
        return ((qi // w - ki // w).abs() <= r) & ((qi % w - ki % w).abs() <= r)

    def add_bias(score, b_, head, qi, ki):
        offset = (ki // w - qi // w + r) * window + (ki % w - qi % w + r)
        return score + table[head, offset.clamp(0, window * window - 1)].to(score.dtype)

    compiled = q.is_cuda if compiled is None else compiled
    block = create_block_mask(inside, None, None, n, n, device=q.device)
    fn = _compiled_flex() if compiled else flex_attention
    out = fn(*(t.reshape(b, nh, n, t.shape[-1]) for t in (q, k, v)), score_mod=add_bias, block_mask=block,
             scale=scale)
    return out.view(b, nh, h, w, v.shape[-1])


def padded_head_dim(head_dim: int) -> int:
    """The smallest power of two >= ``head_dim``."""
    return 1 << max(0, math.ceil(math.log2(head_dim)))


class LocalAttention2d(nn.Module):
    """FeatSharp's attention: multi-head neighbourhood attention with fixed ALiBi on
    channels-last maps, (B, H, W, dim) -> (B, H, W, dim).

    The head dim ``dim / heads`` is rounded up to a power of two ``d_p`` inside ``qkv``
    (``Linear(dim, 3 * heads * d_p)``, no bias): queries and keys use all ``d_p`` channels,
    values only the first ``dim / heads``, and the logit scale is ``(dim / heads) ** -0.5``. When
    ``dim / heads`` is a power of two this is plain multi-head attention. ``proj`` is
    ``Linear(dim, dim)`` with bias. ``flex`` uses ``flex_attention`` on CUDA where it exists
    (:func:`flex_local_attention`); the windowed path runs everywhere else.
    """

    def __init__(self, dim: int, num_heads: int = 16, window: int = 7, flex: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        _check_window(window)
        self.dim, self.num_heads, self.window = int(dim), int(num_heads), int(window)
        self.head_dim = self.dim // self.num_heads
        self.padded_dim = padded_head_dim(self.head_dim)
        self.flex = bool(flex)
        self.qkv = nn.Linear(self.dim, 3 * self.num_heads * self.padded_dim, bias=False)
        self.proj = nn.Linear(self.dim, self.dim)
        self.register_buffer("alibi", alibi_bias(self.num_heads, self.window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if c != self.dim:
            raise ValueError(f"LocalAttention2d({self.dim}) got a map with {c} channels: {tuple(x.shape)}")
        qkv = self.qkv(x).view(b, h, w, 3, self.num_heads, self.padded_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, heads, H, W, d_p)
        scale = self.head_dim ** -0.5
        if self.flex and x.is_cuda and flex_attention_available():
            out = flex_local_attention(q, k, v, self.window, self.alibi, scale)[..., :self.head_dim]
        else:
            out = local_attention(q, k, v[..., :self.head_dim], self.window, self.alibi, scale)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, head_dim={self.head_dim} (qk padded to {self.padded_dim}), "
                f"window={self.window}, flex={self.flex}")
