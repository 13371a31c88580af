"""2D local attention (windowed and flex paths) against per-pixel brute force, FeatSharp's ALiBi
table, head-dim padding, and the attention downsampler."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.distill.components.attention_downsampler import AttentionDownsampler, gaussian_blur
from brixel_plugins.upsamplers.layers.local_attention import (
    LocalAttention2d,
    alibi_bias,
    alibi_slopes,
    flex_attention_available,
    flex_local_attention,
    local_attention,
)


def brute_force(q, k, v, window, bias, scale=None):
    b, nh, h, w, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    r = window // 2
    out = torch.zeros(b, nh, h, w, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(nh):
            for y in range(h):
                for x in range(w):
                    logits, vals = [], []
                    for i in range(window):
                        for j in range(window):
                            yy, xx = y + i - r, x + j - r
                            if 0 <= yy < h and 0 <= xx < w:
                                s = (q[bi, hi, y, x] * k[bi, hi, yy, xx]).sum() * scale
                                logits.append(s + (bias[hi, i * window + j] if bias is not None else 0))
                                vals.append(v[bi, hi, yy, xx])
                    a = torch.softmax(torch.stack(logits), 0)
                    out[bi, hi, y, x] = (a[:, None] * torch.stack(vals)).sum(0)
    return out


@pytest.mark.parametrize("window,with_bias,dv", [(3, False, 4), (5, True, 3), (7, True, 4)])
def test_matches_brute_force(window, with_bias, dv):
    torch.manual_seed(window)
    q, k = (torch.randn(2, 2, 5, 6, 4, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 2, 5, 6, dv, dtype=torch.float64)
    bias = torch.randn(2, window * window, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(local_attention(q, k, v, window, bias, scale=0.3),
                               brute_force(q, k, v, window, bias, scale=0.3))


def test_large_window_is_global_attention():
    # a window covering the whole image from every pixel is plain (unmasked) attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, 4, 5, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(*(t.flatten(2, 3) for t in (q, k, v))).view(1, 3, 4, 5, 8)
    torch.testing.assert_close(local_attention(q, k, v, 9), ref, rtol=1e-5, atol=1e-5)


def test_alibi_table_by_hand():
    assert alibi_slopes(6).tolist() == [1 / 2, 1 / 2, 1 / 4, 1 / 4, 1 / 8, 1 / 8]
    assert alibi_slopes(16)[-1].item() == 2.0 ** -8
    # window 3, offsets (dy, dx) row-major from (-1, -1) to (1, 1); even heads: rows, odd: columns
    rows = [1, 1, 1, 0, 0, 0, 1, 1, 1]
    cols = [1, 0, 1, 1, 0, 1, 1, 0, 1]
    expected = torch.tensor([[-0.5 * a for a in rows], [-0.5 * a for a in cols],
                             [-0.25 * a for a in rows], [-0.25 * a for a in cols]])
    torch.testing.assert_close(alibi_bias(4, 3), expected, rtol=0, atol=0)
    t7 = alibi_bias(3, 7).view(3, 7, 7)
    assert t7[0, 0, 3].item() == -1.5 and t7[1, 3, 0].item() == -1.5 and t7[2, 6, 6].item() == -0.75


def window_reference(x, attn):
    """LocalAttention2d by a different route: global attention with the window as a mask and the
    ALiBi table as a dense bias, unpadded per-head q, k (first d_p dims) and v (first d dims)."""
    b, h, w, c = x.shape
    nh, d, dp, r = attn.num_heads, attn.head_dim, attn.padded_dim, attn.window // 2
    qkv = (x.reshape(b, h * w, c) @ attn.qkv.weight.T).view(b, h * w, 3, nh, dp)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    ys, xs = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]
    inside = (dy.abs() <= r) & (dx.abs() <= r)
    slopes = alibi_slopes(nh).float()
    bias = torch.stack([-slopes[i] * (dy if i % 2 == 0 else dx).abs() for i in range(nh)])
    logits = (q @ k.transpose(-1, -2)) * d ** -0.5 + bias
    out = torch.softmax(logits.masked_fill(~inside, -math.inf), -1) @ v[..., :d]
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


@pytest.mark.parametrize("dim,heads,padded", [(128, 16, 8), (48, 16, 4), (40, 4, 16)])
def test_module_against_reference(dim, heads, padded):
    """Head dim dim/heads rounded up to a power of two inside qkv; when it already is one (128/16 = 8)
    the module is plain multi-head attention (the reference never pads)."""
    torch.manual_seed(dim)
    attn = LocalAttention2d(dim, heads, window=5).double()
    assert attn.padded_dim == padded and attn.qkv.bias is None and attn.proj.bias is not None
    assert attn.qkv.out_features == 3 * heads * padded
    x = torch.randn(2, 6, 7, dim, dtype=torch.float64)
    torch.testing.assert_close(attn(x), window_reference(x, attn))


def test_module_grad_and_errors():
    torch.manual_seed(0)
    attn = LocalAttention2d(32, 16, window=7)
    x = torch.randn(2, 5, 9, 32, requires_grad=True)
    attn(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.parameters())
    assert "alibi" not in attn.state_dict()  # fixed, rebuilt from the config
    with pytest.raises(ValueError, match="odd"):
        LocalAttention2d(32, 16, window=6)


@pytest.mark.skipif(not flex_attention_available(), reason="this torch has no flex_attention")
def test_flex_path_matches_windowed():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 5, 6, 8) for _ in range(3))
    bias = alibi_bias(4, 5)
    ref = local_attention(q, k, v, 5, bias, scale=0.4)
    torch.testing.assert_close(flex_local_attention(q, k, v, 5, bias, scale=0.4, compiled=False), ref,
                               rtol=1e-4, atol=1e-5)


def test_downsampler_starts_as_average_pooling():
    torch.manual_seed(0)
    ds = AttentionDownsampler(8, 4).eval()
    x = torch.randn(2, 8, 12, 20)
    y = ds(x)
    assert y.shape == (2, 8, 3, 5)
    torch.testing.assert_close(y, F.avg_pool2d(x, 4))
    # overlapping window: average over the in-image part of each 6x6 window
    ds6 = AttentionDownsampler(8, 4, kernel_size=6).eval()
    torch.testing.assert_close(ds6(x), F.avg_pool2d(x, 6, stride=4, padding=1, count_include_pad=False))


@pytest.mark.parametrize("factor", [2, 3])
def test_featsharp_downsampler(factor):
    """FeatSharp's settings: 9x9 window, padding 4, stride u, 5x5 blur; at init the average of the
    blurred map over the in-image part of each window, whatever the noisy position weights."""
    torch.manual_seed(factor)
    ds = AttentionDownsampler(8, factor, kernel_size=9, padding=4, blur_size=5, blur_sigma=1.0, logit_dropout=0.2,
                              init_noise=0.01, dropout=0.0).eval()
    assert (ds.w - 1).abs().max() > 0 and (ds.w - 1).abs().max() < 0.1
    x = torch.randn(2, 8, 4 * factor, 5 * factor)
    ref = F.avg_pool2d(gaussian_blur(x, 5, 1.0), 9, stride=factor, padding=4, count_include_pad=False)
    torch.testing.assert_close(ds(x), ref)
    with torch.no_grad():
        ds.saliency[1].weight.normal_()
    ds.train()
    torch.manual_seed(1)
    a = ds(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, ds(x))  # the logit dropout draws per cell


def test_downsampler_learns_a_softmax_kernel():
    torch.manual_seed(0)
    ds = AttentionDownsampler(8, 2).eval()
    with torch.no_grad():
        ds.saliency[1].weight.normal_()
    x = torch.randn(1, 8, 4, 4)
    cell = x[0, :, :2, :2].reshape(8, 4)  # first 2x2 cell
    sal = (ds.saliency[1].weight @ cell + ds.saliency[1].bias).squeeze(0)
    ref = (cell * torch.softmax(sal, 0)).sum(1)
    torch.testing.assert_close(ds(x)[0, :, 0, 0], ref, rtol=1e-5, atol=1e-5)
    ds.train()
    ds(x).sum().backward()
    assert ds.w.grad.abs().sum() > 0 and ds.saliency[1].weight.grad.abs().sum() > 0
