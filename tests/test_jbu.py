"""FeatUp JBU: parameter counts, released key layout, shapes, and the filtering it computes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones.dinov3 import BackboneSpec
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.jbu import JBULayer, JBUUpsampler, adaptive_filter, neighbour_similarity, prime_factors

LAYER_KEYS = {"range_temp", "sigma_spatial", "range_proj.0.weight", "range_proj.0.bias", "range_proj.3.weight",
              "range_proj.3.bias", "fixup_proj.0.weight", "fixup_proj.0.bias", "fixup_proj.3.weight",
              "fixup_proj.3.bias"}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def jbu_stack(dim, factor):
    """The registered JBU at width ``dim``: its stack ``up1..``, ``fixup_proj`` and ``upsample(source, image)``."""
    return JBUUpsampler(BackboneSpec("vits16", dim, 1, 1), factor)


def test_prime_factors():
    assert prime_factors(2) == [2]
    assert prime_factors(12) == [2, 2, 3]
    assert prime_factors(16) == [2, 2, 2, 2]
    assert prime_factors(7) == [7]
    with pytest.raises(ValueError):
        prime_factors(1)


@pytest.mark.parametrize("dim", [64, 384])
def test_layer_params_and_keys(dim):
    layer = JBULayer(dim, 2)
    assert n_params(layer) == 6233
    assert set(layer.state_dict()) == LAYER_KEYS
    assert layer.range_temp.item() == 0.0 and layer.sigma_spatial.item() == 1.0


def test_stack16_released_layout_on_meta():
    with torch.device("meta"):
        up = build_upsampler(dict(type="jbu", factor=16), BackboneSpec("vits16", 384, 12, 6))
    want = {f"up{i}.{k}" for i in range(1, 5) for k in LAYER_KEYS} | {"fixup_proj.1.weight", "fixup_proj.1.bias"}
    assert set(up.state_dict()) == want  # the registered upsampler carries the released keys at top level
    assert n_params(up) == 172_772


def test_the_registered_upsampler_is_the_one_jbu_stack():
    """No stand-alone stack class beside the registered upsampler (it served tests only)."""
    import brixel_plugins.upsamplers.jbu as jbu
    from brixel_plugins.upsamplers import Upsampler

    assert JBUUpsampler.__bases__ == (Upsampler,) and not hasattr(jbu, "JBUStack")


def test_stack_one_layer_per_prime():
    stack = jbu_stack(8, 12)
    assert [getattr(stack, f"up{i}").scale for i in (1, 2, 3)] == [2, 2, 3]
    assert not hasattr(stack, "up4")


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("hw,batch", [((64, 96), 1), ((48, 80), 3)])
def test_registered_shapes(tiny_backbone, tiny_spec, factor, hw, batch):
    up = build_upsampler(dict(type="jbu", factor=factor), tiny_spec)
    assert up.needs_image and not up.calls_backbone and up.layer_indices == (tiny_spec.depth - 1,)
    torch.manual_seed(0)
    img = torch.randn(batch, 3, *hw)
    layers = tiny_backbone.layers(img, up.layer_indices)
    out = up(img, layers)
    assert out.shape == (batch, tiny_spec.embed_dim, hw[0] // 16 * factor, hw[1] // 16 * factor)
    assert out.shape[-2:] == up.output_size(hw)
    assert torch.isfinite(out).all()


def test_adaptive_filter_equals_unfold_einsum():
    torch.manual_seed(0)
    src = torch.randn(2, 5, 9, 11)
    ker = torch.randn(2, 49, 9, 11)
    cols = F.unfold(F.pad(src, (3, 3, 3, 3), mode="reflect"), 7).view(2, 5, 49, 9, 11)
    ref = torch.einsum("bdkhw,bkhw->bdhw", cols, ker)
    torch.testing.assert_close(adaptive_filter(src, ker, 3), ref, rtol=1e-5, atol=1e-5)


def gaussian_7x7(sigma):
    """Reference spatial kernel written out independently: normalised exp(-r^2 / 2 sigma^2) on a
    7x7 grid of step 1/3 in [-1, 1]."""
    coords = [-1 + 2 * i / 6 for i in range(7)]
    g = torch.tensor([[math.exp(-(x * x + y * y) / (2 * sigma ** 2)) for x in coords] for y in coords],
                     dtype=torch.float64)
    return (g / g.sum()).float()


@pytest.mark.parametrize("sigma,temp", [(1.0, 0.0), (0.45, 3.0)])
def test_constant_guidance_is_pure_spatial_filter(sigma, temp):
    torch.manual_seed(0)
    dim, scale = 6, 2
    layer = JBULayer(dim, scale).eval()
    with torch.no_grad():
        layer.sigma_spatial.fill_(sigma)
        layer.range_temp.fill_(temp)
        layer.fixup_proj[3].weight.zero_()  # remove the learned kernel fixup
        layer.fixup_proj[3].bias.zero_()
    src = torch.randn(2, dim, 5, 7)
    image = torch.tensor([0.3, -1.2, 0.8]).view(1, 3, 1, 1).expand(2, 3, 80, 112)
    out = layer(src, image)

    up = F.interpolate(src, size=(10, 14), mode="bicubic", align_corners=False)
    weight = gaussian_7x7(sigma).expand(dim, 1, 7, 7)
    ref = F.conv2d(F.pad(up, (3, 3, 3, 3), mode="reflect"), weight, groups=dim)
    assert out.shape == (2, dim, 10, 14)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    # a textured guidance image makes the range term matter: no longer the fixed filter
    textured = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        layer.range_temp.fill_(3.0)
    assert (layer(src, textured) - ref).abs().max() > 1e-2


def test_gradients_reach_every_parameter(photo):
    torch.manual_seed(0)
    stack = jbu_stack(16, 4).train()
    src = torch.randn(1, 16, 4, 6)
    stack.upsample(src, photo).square().mean().backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_factor_one_rejected(tiny_spec):
    with pytest.raises(ValueError):
        build_upsampler(dict(type="jbu", factor=1), tiny_spec)


def test_release_16x_stack_converts_and_refuses(tmp_path, tiny_spec):
    import subprocess
    import sys
    from pathlib import Path

    from brixel_plugins.backbones import WeightFileError
    from brixel_plugins.files.upsampler_file import convert_release, load_upsampler
    from brixel_plugins.upsamplers import build_upsampler

    torch.manual_seed(0)
    src = build_upsampler(dict(type="jbu", factor=16), tiny_spec)
    for p in src.parameters():
        p.data.normal_()
    # FeatUp saves the stack under "upsampler."
    torch.save({f"upsampler.{k}": v for k, v in src.state_dict().items()}, tmp_path / "featup_jbu.pth")
    dst = convert_release(tmp_path / "featup_jbu.pth", tmp_path / "jbu.safetensors", "jbu", tiny_spec, factor=16)
    loaded = load_upsampler(dst, tiny_spec, method="jbu")
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(WeightFileError, match="JBU stack of 4 layers for D=64; this one .factor 4"):
        convert_release(tmp_path / "featup_jbu.pth", tmp_path / "x.safetensors", "jbu", tiny_spec, factor=4)
    # the CLI reports a refusal as one line, without a traceback
    tool = Path(__file__).resolve().parents[1] / "tools" / "convert_weights.py"
    r = subprocess.run([sys.executable, str(tool), "lift", str(tmp_path / "featup_jbu.pth"),
                        str(tmp_path / "y.safetensors"), "--arch", "vits16"], capture_output=True, text=True)
    assert r.returncode != 0 and "is not a LiFT checkpoint" in r.stderr and "Traceback" not in r.stderr


# An independent reading of FeatUp's released JBU (featup/upsamplers.py: JBULearnedRange,
# JBUStack; featup/adaptive_conv_cuda AdaptiveConv as unfold + einsum), in its own order of
# operations: NCHW convolutions, the unfolded range kernel, bicubic then reflect padding, and
# the final ``0.1 * fixup_proj(x) + x`` after the last layer.
def release_jbu_layer(layer, source, guidance):
    gb, _, gh, gw = guidance.shape
    d = 2 * layer.radius + 1
    proj = layer.range_proj(guidance)
    queries = F.unfold(F.pad(proj, [layer.radius] * 4, mode="reflect"), d).reshape(gb, proj.shape[1], d * d, gh, gw)
    temp = layer.range_temp.exp().clamp_min(1e-4).clamp_max(1e4)
    range_kernel = F.softmax(temp * torch.einsum("bcphw,bchw->bphw", queries, proj), dim=1)
    t = torch.linspace(-1, 1, d)
    x, y = torch.meshgrid(t, t, indexing="ij")
    spatial = torch.exp(-(x.square() + y.square()) / (2 * layer.sigma_spatial ** 2)).reshape(1, d * d, 1, 1)
    combined = range_kernel * spatial
    combined = combined / combined.sum(1, keepdim=True).clamp(1e-7)
    combined = combined + 0.1 * layer.fixup_proj(torch.cat([combined, guidance], dim=1))
    hr = F.interpolate(source, (gh, gw), mode="bicubic", align_corners=False)
    cols = F.unfold(F.pad(hr, [layer.radius] * 4, mode="reflect"), d).view(gb, source.shape[1], d * d, gh, gw)
    return torch.einsum("bcphw,bphw->bchw", cols, combined)


def release_jbu_stack(stack, source, guidance):
    x = source
    for n in range(1, len(stack.primes) + 1):
        layer = getattr(stack, f"up{n}")
        x = release_jbu_layer(layer, x, F.adaptive_avg_pool2d(guidance, (x.shape[-2] * 2, x.shape[-1] * 2)))
    return stack.fixup_proj(x) * 0.1 + x


@pytest.mark.parametrize("factor,hw", [(4, (4, 6)), (16, (4, 4))])
def test_stack_equals_the_release_computation(factor, hw):
    """Our stack (channel mixing moved onto the source, channels-last filters, the strided
    similarity) computes what FeatUp's code computes, on the same weights, with and without
    autograd. The test can fail: dropping the final mixing changes the output by ~1e-1."""
    torch.manual_seed(0)
    stack = jbu_stack(24, factor).eval()
    with torch.no_grad():  # trained-looking scalars: the temperature and sigma matter
        for n in range(1, len(stack.primes) + 1):
            getattr(stack, f"up{n}").range_temp.fill_(1.5)
            getattr(stack, f"up{n}").sigma_spatial.fill_(0.6)
        stack.fixup_proj[1].weight.mul_(8.0)
    src = torch.randn(2, 24, *hw)
    guidance = torch.randn(2, 3, hw[0] * 16, hw[1] * 16)
    with torch.no_grad():
        ref = release_jbu_stack(stack, src, guidance)
        fast = stack.upsample(src, guidance)
    grad_src = src.clone().requires_grad_()
    with_grad = stack.upsample(grad_src, guidance)
    assert fast.shape == ref.shape == (2, 24, hw[0] * factor, hw[1] * factor)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(with_grad.detach(), ref, rtol=1e-5, atol=2e-5)
    with torch.no_grad():
        stack.fixup_proj[1].weight.zero_()
        stack.fixup_proj[1].bias.zero_()
        assert (stack.upsample(src, guidance) - ref).abs().max() > 1e-2


def test_neighbour_similarity_with_and_without_autograd_equal_unfold():
    torch.manual_seed(0)
    key = torch.randn(2, 8, 9, 11)
    cols = F.unfold(F.pad(key, (3, 3, 3, 3), mode="reflect"), 7).view(2, 8, 49, 9, 11)
    ref = torch.einsum("bkphw,bkhw->bphw", cols, key)
    with torch.no_grad():
        torch.testing.assert_close(neighbour_similarity(key, 3), ref, rtol=1e-5, atol=1e-5)
    grad_key = key.clone().requires_grad_()
    torch.testing.assert_close(neighbour_similarity(grad_key, 3).detach(), ref, rtol=1e-5, atol=1e-5)
