"""Pure-PyTorch multi-scale deformable attention against a hand-written bilinear reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from brixel_plugins.upsamplers.layers import MSDeformAttn, multi_scale_deformable_attn


def brute_force(value, shapes, locs, weights):
    """Explicit loops: bilinear interpolation by hand, zero outside the map, pixel centres at
    ((j + 0.5) / W, (i + 0.5) / H)."""
    b, s, m, dh = value.shape
    _, lq, _, n_levels, n_points, _ = locs.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, m, dh, dtype=value.dtype)
    for bi in range(b):
        for qi in range(lq):
            for mi in range(m):
                for li, (h, w) in enumerate(shapes):
                    for pi in range(n_points):
                        x = locs[bi, qi, mi, li, pi, 0].item() * w - 0.5
                        y = locs[bi, qi, mi, li, pi, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = torch.zeros(dh, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * value[bi, starts[li] + yy * w + xx, mi]
                        out[bi, qi, mi] += weights[bi, qi, mi, li, pi] * sample
    return out.reshape(b, lq, m * dh)


def random_inputs(shapes, b=2, lq=5, m=3, dh=4, p=3, lo=-0.3, hi=1.3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, dh, generator=g, dtype=dtype)
    locs = lo + (hi - lo) * torch.rand(b, lq, m, len(shapes), p, 2, generator=g, dtype=dtype)
    weights = torch.rand(b, lq, m, len(shapes), p, generator=g, dtype=dtype)
    return value, locs, weights


@pytest.mark.parametrize("shapes", [[(4, 5)], [(3, 4), (2, 5), (1, 1)], [(6, 2), (1, 3)]])
def test_matches_brute_force_including_out_of_bounds(shapes):
    value, locs, weights = random_inputs(shapes)
    # make sure some points are fully outside, some partly outside, some inside
    assert (locs < 0).any() and (locs > 1).any() and ((locs > 0.2) & (locs < 0.8)).any()
    got = multi_scale_deformable_attn(value, shapes, locs, weights)
    want = brute_force(value, shapes, locs, weights)
    assert got.shape == (2, 5, 3 * 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_spatial_shapes_as_tensor_or_list_agree():
    shapes = [(3, 4), (2, 2)]
    value, locs, weights = random_inputs(shapes, dtype=torch.float32)
    a = multi_scale_deformable_attn(value, shapes, locs, weights)
    b = multi_scale_deformable_attn(value, torch.tensor(shapes), locs, weights)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pixel_centres_and_far_outside_known_values():
    # one level 2x3, one head, values = 10*i + j, one point per query
    h, w = 2, 3
    value = torch.tensor([[10.0 * i + j for i in range(h) for j in range(w)]]).view(1, h * w, 1, 1)
    pts = [((0 + 0.5) / w, (0 + 0.5) / h), ((2 + 0.5) / w, (1 + 0.5) / h),  # centres of (0,0), (1,2)
           (1.0 / w, (0 + 0.5) / h),  # halfway between (0,0) and (0,1)
           (0.0, (1 + 0.5) / h),  # left edge of row 1: half of pixel (1,0), half zero padding
           (-1.0, 2.0)]  # far outside
    locs = torch.tensor(pts).view(1, len(pts), 1, 1, 1, 2)
    weights = torch.ones(1, len(pts), 1, 1, 1)
    out = multi_scale_deformable_attn(value, [(h, w)], locs, weights).flatten()
    torch.testing.assert_close(out, torch.tensor([0.0, 12.0, 0.5, 5.0, 0.0]))


def test_gradients_flow_to_value_locations_and_weights():
    shapes = [(3, 4), (2, 3)]
    value, locs, weights = random_inputs(shapes, lo=0.1, hi=0.9)
    for t in (value, locs, weights):
        t.requires_grad_(True)
    out = multi_scale_deformable_attn(value, shapes, locs, weights)
    (out * torch.randn_like(out)).sum().backward()
    for name, t in (("value", value), ("locations", locs), ("weights", weights)):
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name
    # exact analytic gradients (away from the kinks at pixel centres, which random points avoid)
    v, l_, w_ = (t.detach().clone().requires_grad_(True)
                 for t in (value[:1, :, :2], locs[:1, :2, :2], weights[:1, :2, :2]))
    assert torch.autograd.gradcheck(lambda a, b, c: multi_scale_deformable_attn(a, shapes, b, c), (v, l_, w_))


def test_shape_errors_are_clear():
    value, locs, weights = random_inputs([(3, 4)])
    with pytest.raises(ValueError, match="cover"):
        multi_scale_deformable_attn(value, [(3, 5)], locs, weights)
    with pytest.raises(ValueError, match="levels"):
        multi_scale_deformable_attn(value, [(2, 4), (1, 4)], locs, weights)


def test_module_init_and_forward():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3, ratio=0.5)
    assert attn.value_proj.out_features == 16 and attn.output_proj.in_features == 16
    # offsets: zero weight, bias = rays; point k at (k+1) x a direction whose larger component is 1
    assert attn.sampling_offsets.weight.abs().sum() == 0
    rays = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(rays[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(rays[1, 1], torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rays.abs().amax(-1), torch.tensor([1.0, 2.0, 3.0]).expand(4, 2, 3))
    assert attn.attention_weights.weight.abs().sum() == 0 and attn.attention_weights.bias.abs().sum() == 0

    shapes = [(4, 6), (2, 3)]
    q = torch.randn(2, 7, 32)
    feat = torch.randn(2, 30, 32)
    ref = torch.rand(1, 7, 2, 2)
    out = attn(q, ref, feat, shapes)
    assert out.shape == (2, 7, 32)

    # the module is value_proj -> sampling at ref + offset/(W, H) with softmax weights -> output_proj
    value = attn.value_proj(feat).view(2, 30, 4, 4)
    offs = attn.sampling_offsets(q).view(2, 7, 4, 2, 3, 2)
    norm = torch.tensor([[6.0, 4.0], [3.0, 2.0]])
    locs = ref[:, :, None, :, None, :] + offs / norm[None, None, None, :, None, :]
    wts = attn.attention_weights(q).view(2, 7, 4, 6).softmax(-1).view(2, 7, 4, 2, 3)
    want = attn.output_proj(brute_force(value.double(), shapes, locs.double(), wts.double()).float())
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)

    # padded inputs contribute nothing: the mask zeroes projected values (a zero *input* would
    # still give the value bias, made non-zero here so the two differ)
    with torch.no_grad():
        attn.value_proj.bias.normal_()
    value = attn.value_proj(feat).view(2, 30, 4, 4)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[:, :24] = True
    out_masked = attn(q, ref, feat, shapes, padding_mask=mask)
    out_zeroed = attn(q, ref, torch.cat([torch.zeros(2, 24, 32), feat[:, 24:]], 1), shapes)
    assert not torch.allclose(out_masked, out_zeroed)
    value_m = value.masked_fill(mask[..., None, None], 0)
    want_m = attn.output_proj(brute_force(value_m.double(), shapes, locs.double(), wts.double()).float())
    torch.testing.assert_close(out_masked, want_m, rtol=1e-4, atol=1e-5)


class GridSampleDtypes(TorchFunctionMode):
    """Records the dtypes of (input, grid) of every ``F.grid_sample`` call as the caller made it,
    before autocast could cast them (autocast runs below the Python function layer)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.grid_sample:
            self.seen.append((args[0].dtype, args[1].dtype))
        return func(*args, **(kwargs or {}))


def test_module_samples_in_fp32_under_bf16_autocast_and_bad_heads():
    """bf16 sampling locations would quantise positions to ~1/256 of the map: the values and the
    locations must reach grid_sample in fp32 even when everything around runs in bf16."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=64, n_levels=2, n_heads=16, n_points=4, ratio=0.5)
    q, feat, ref = torch.randn(2, 9, 64), torch.randn(2, 12 + 4, 64), torch.rand(1, 9, 2, 2)
    with GridSampleDtypes() as rec, torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, ref, feat, [(3, 4), (2, 2)])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()  # the projections ran in bf16
    assert rec.seen == [(torch.float32, torch.float32)] * 2  # one call per level, both in fp32
    with pytest.raises(ValueError, match="n_heads"):
        MSDeformAttn(d_model=60, n_heads=16, ratio=0.5)
