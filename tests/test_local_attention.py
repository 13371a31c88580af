"""2D local attention against a per-pixel brute force; FeatUp's attention downsampler."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.ops.attention_downsampler import AttentionDownsampler
from brixel_plugins.ops.local_attention import LocalAttention2d, local_attention


def brute_force(q, k, v, window, bias):
    b, nh, h, w, d = q.shape
    r = window // 2
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(nh):
            for y in range(h):
                for x in range(w):
                    logits, vals = [], []
                    for i in range(window):
                        for j in range(window):
                            yy, xx = y + i - r, x + j - r
                            if 0 <= yy < h and 0 <= xx < w:
                                s = (q[bi, hi, y, x] * k[bi, hi, yy, xx]).sum() * d ** -0.5
                                logits.append(s + (bias[hi, i * window + j] if bias is not None else 0))
                                vals.append(v[bi, hi, yy, xx])
                    a = torch.softmax(torch.stack(logits), 0)
                    out[bi, hi, y, x] = (a[:, None] * torch.stack(vals)).sum(0)
    return out


@pytest.mark.parametrize("window,with_bias", [(3, False), (5, True), (7, True)])
def test_matches_brute_force(window, with_bias):
    torch.manual_seed(window)
    q, k, v = (torch.randn(2, 2, 5, 6, 4, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, window * window, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(local_attention(q, k, v, window, bias), brute_force(q, k, v, window, bias))


def test_large_window_is_global_attention():
    # a window covering the whole image from every pixel is plain (unmasked) attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, 4, 5, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(*(t.flatten(2, 3) for t in (q, k, v))).view(1, 3, 4, 5, 8)
    torch.testing.assert_close(local_attention(q, k, v, 9), ref, rtol=1e-5, atol=1e-5)


def test_module_shapes_and_grad():
    torch.manual_seed(0)
    attn = LocalAttention2d(16, 4, window=7, rel_pos_bias=True)
    x = torch.randn(3, 6, 10, 16, requires_grad=True)
    y = attn(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.parameters())
    with pytest.raises(ValueError):
        LocalAttention2d(16, 4, window=6)


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
