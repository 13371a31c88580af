"""FeatSharp: shapes, identity at init, one backbone call with 1 + u^2 images, gradients, weight files."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones.dinov3 import BackboneSpec
from brixel_plugins.backbones.weights import WeightFileError
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.io import load_upsampler, save_upsampler
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.featsharp import FeatSharp

from conftest import make_tiny_backbone


def fitted(spec, backbone, factor=2, seed=0, **kw) -> FeatSharp:
    torch.manual_seed(seed)
    fs = build_upsampler(dict(type="featsharp", factor=factor, **kw), spec)
    fs.calibrate(backbone.last_layer(torch.randn(3, 3, 64, 64)))
    fs.finish_calibration()
    return fs


def test_flags_and_config(tiny_spec):
    fs = build_upsampler(dict(type="featsharp", factor=3, window=5), tiny_spec)
    assert fs.needs_image and fs.calls_backbone and fs.layer_indices == ()
    assert fs.config == dict(factor=3, window=5, num_heads=2 * tiny_spec.num_heads, mlp_ratio=4.0,
                             debias_hw=[16, 16], rel_pos_bias=False)
    assert fs.jbu.primes == [3]
    with pytest.raises(ValueError):
        build_upsampler(dict(type="featsharp", factor=1), tiny_spec)


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("hw,batch", [((64, 96), 1), ((48, 80), 3)])
def test_shapes(tiny_backbone, tiny_spec, factor, hw, batch):
    fs = fitted(tiny_spec, tiny_backbone, factor).eval()
    img = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        out = fs(img, {}, tiny_backbone)
    assert out.shape == (batch, tiny_spec.embed_dim, hw[0] // 16 * factor, hw[1] // 16 * factor)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("factor", [2, 3])
def test_untrained_block_returns_jbu_map(tiny_backbone, tiny_spec, photo, factor):
    fs = fitted(tiny_spec, tiny_backbone, factor).eval()
    with torch.no_grad():
        fs.debias.normal_(std=0.5)  # a non-trivial de-bias must not break the identity
        out = fs(photo, {}, tiny_backbone)
        lo = tiny_backbone.last_layer(photo)
        jbu = fs.phi_s.inverse(fs.jbu(fs.phi_s(lo + F.interpolate(fs.debias, size=lo.shape[-2:], mode="bilinear",
                                                                  antialias=True)), photo))
        torch.testing.assert_close(out, jbu, rtol=1e-6, atol=1e-6)  # exact on CPU; 1e-5 LayerScale would fail
        # once the LayerScales move, the tiles change the output
        fs.block.gamma1.fill_(0.1)
        fs.block.gamma2.fill_(0.1)
        assert (fs(photo, {}, tiny_backbone) - jbu).abs().max() > 1e-3


@pytest.mark.parametrize("factor,batch", [(2, 1), (3, 2)])
def test_one_backbone_call_with_all_tiles(tiny_spec, factor, batch):
    backbone = make_tiny_backbone()  # its own instance: we wrap its timm model's forward
    calls = []
    real = backbone.model.forward_intermediates

    def counting(x, *a, **kw):
        calls.append(x.clone())
        return real(x, *a, **kw)

    backbone.model.forward_intermediates = counting
    fs = fitted(tiny_spec, backbone, factor)
    calls.clear()
    img = torch.randn(batch, 3, 48, 64)
    with torch.no_grad():
        fs.eval()(img, {}, backbone)
    assert len(calls) == 1
    sent = calls[0]
    assert sent.shape == (batch * (1 + factor ** 2), 3, 48, 64)
    torch.testing.assert_close(sent[:batch], img)
    big = F.interpolate(img, size=(48 * factor, 64 * factor), mode="bicubic", align_corners=False, antialias=True)
    for ty in range(factor):
        for tx in range(factor):
            t = (ty * factor + tx) * batch
            torch.testing.assert_close(sent[batch + t:batch + t + batch],
                                       big[:, :, ty * 48:(ty + 1) * 48, tx * 64:(tx + 1) * 64])


def test_stitch_places_tiles(tiny_backbone, tiny_spec):
    fs = build_upsampler(dict(type="featsharp", factor=2), tiny_spec)
    img = torch.randn(2, 3, 32, 48)
    tiles = fs.tiles(img, tuple(img.shape[-2:]))
    maps = tiny_backbone.last_layer(tiles)
    grid = fs.stitch(maps, 2)
    assert grid.shape == (2, tiny_spec.embed_dim, 4, 6)
    big = F.interpolate(img, size=(64, 96), mode="bicubic", align_corners=False, antialias=True)
    for ty, tx in [(0, 1), (1, 0)]:  # off-diagonal tiles catch swapped tile axes
        tile = tiny_backbone.last_layer(big[:, :, ty * 32:(ty + 1) * 32, tx * 48:(tx + 1) * 48])
        torch.testing.assert_close(grid[:, :, ty * 2:(ty + 1) * 2, tx * 3:(tx + 1) * 3], tile, rtol=1e-5, atol=1e-5)


def test_gradients_reach_upsampler_not_backbone(tiny_spec, photo):
    backbone = make_tiny_backbone()
    fs = fitted(tiny_spec, backbone, 2, rel_pos_bias=True).train()
    with torch.no_grad():  # move off the exact-identity init so every branch gets gradient
        fs.block.gamma1.fill_(0.1)
        fs.block.gamma2.fill_(0.1)
        fs.block.attn.rel_pos_bias.normal_()
    out = DenseFeaturizer(backbone, fs)(photo)
    assert out.shape == (1, tiny_spec.embed_dim, 8, 12)
    out.square().mean().backward()
    for name, p in fs.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(b.grad is None for b in fs.buffers())  # PHI-S statistics stay fixed


def test_unfitted_refuses(tiny_backbone, tiny_spec, photo):
    fs = build_upsampler(dict(type="featsharp"), tiny_spec)
    with pytest.raises(RuntimeError, match="finish_calibration"):
        fs(photo, {}, tiny_backbone)
    fitted_fs = fitted(tiny_spec, tiny_backbone)
    with pytest.raises(ValueError, match="backbone"):
        fitted_fs(photo, {})


def test_weight_file_round_trip(tmp_path, tiny_backbone, tiny_spec, photo):
    fs = fitted(tiny_spec, tiny_backbone, 3, window=5, debias_hw=(4, 6)).eval()
    with torch.no_grad():
        fs.debias.normal_()
        fs.block.gamma1.fill_(0.05)
    path = save_upsampler(tmp_path / "fs.safetensors", fs, extra={"note": "test"})
    back = load_upsampler(path, tiny_spec, method="featsharp").eval()
    assert isinstance(back, FeatSharp) and back.config == fs.config and back.factor == 3
    assert bool(back.phi_s.fitted)
    for k, v in fs.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(back(photo, {}, tiny_backbone), fs(photo, {}, tiny_backbone))
    other = BackboneSpec("vits16", 96, tiny_spec.depth, tiny_spec.num_heads)
    with pytest.raises(WeightFileError, match="embed_dim"):
        load_upsampler(path, other)


def test_param_count_vits_u2():
    with torch.device("meta"):
        fs = build_upsampler(dict(type="featsharp", factor=2), BackboneSpec("vits16", 384, 12, 6))
    jbu = sum(p.numel() for p in fs.jbu.parameters())
    assert jbu == 6233 + 384 * 384 + 384
    assert fs.block.attn.num_heads == 12 and fs.block.mlp.w3.in_features == 2048
