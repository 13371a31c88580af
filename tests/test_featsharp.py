"""FeatSharp as released: real high-resolution tiles, the fusion block (against a per-pixel brute
force), inits, spectral reparametrisation baked at export, the authors' checkpoint layout."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones.dinov3 import BackboneSpec
from brixel_plugins.backbones.weights import WeightFileError, read_state_dict
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.io import load_upsampler, save_upsampler
from brixel_plugins.ops.local_attention import alibi_slopes
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.featsharp import FeatSharp, FusionBlock, swiglu_hidden

from conftest import make_tiny_backbone


def fitted(spec, backbone, factor=2, seed=0, **kw) -> FeatSharp:
    torch.manual_seed(seed)
    fs = build_upsampler(dict(type="featsharp", factor=factor, **kw), spec)
    fs.calibrate(backbone.last_layer(torch.randn(3, 3, 64, 64)))
    fs.finish_calibration()
    return fs


def perturbed(fs: FeatSharp, seed: int = 1) -> FeatSharp:
    """Every learned tensor moved off its init (LayerScale, tile embedding, de-bias, JBU scalars)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in fs.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return fs


def test_flags_config_and_inits(tiny_spec):
    fs = build_upsampler(dict(type="featsharp", factor=3, window=5), tiny_spec)
    c = tiny_spec.embed_dim
    assert fs.needs_image and fs.uses_image_hr and fs.calls_backbone and fs.layer_indices == ()
    assert fs.config == dict(factor=3, window=5, num_heads=16, debias_hw=[32, 32], spectral_reparam=False,
                             flex_attention=False, zero_start=False)
    blk = fs.block
    assert blk.attn.num_heads == 16 and blk.attn.head_dim == 2 * c // 16 == blk.attn.padded_dim == 8
    assert blk.attn.qkv.bias is None and blk.attn.proj.bias is not None
    assert (blk.ls1.gamma == 1e-6).all() and (blk.ls2.gamma == 1e-6).all() and blk.ls2.gamma.shape == (c,)
    assert blk.mlp.w12.out_features == 2 * swiglu_hidden(c) and blk.mlp.w3.out_features == c
    assert swiglu_hidden(c) == (int(8 * c * 2 / 3) + 7) // 8 * 8 == 344 and swiglu_hidden(384) == 2048
    assert fs.tile_pos.shape == (1, c, 3, 3) and not fs.tile_pos.any()
    assert fs.debias.shape == (1, c, 32, 32) and not fs.debias.any()
    assert [m.scale for m in fs.jbu.ups] == [3]
    layer = fs.jbu.ups[0]
    assert not hasattr(layer, "fixup_proj") and layer.range_temp == 0 and layer.sigma_spatial == 1
    assert layer.range_alpha == 1 and layer.spatial_alpha == 1
    assert [type(m).__name__ for m in layer.range_proj] == ["Conv2d", "GELU", "Conv2d"]
    assert build_upsampler(dict(type="featsharp", factor=12), tiny_spec).jbu.primes == [2, 2, 3]
    with pytest.raises(ValueError):
        build_upsampler(dict(type="featsharp", factor=1), tiny_spec)


def test_param_count_vits_u2():
    with torch.device("meta"):
        fs = build_upsampler(dict(type="featsharp", factor=2), BackboneSpec("vits16", 384, 12, 6))
    assert fs.block.attn.head_dim == 48 and fs.block.attn.padded_dim == 64  # 2C/16 = 48 -> 64 inside qkv
    assert sum(p.numel() for p in fs.jbu.parameters()) == 1188
    assert sum(p.numel() for p in fs.parameters()) == 7_286_692


@pytest.mark.parametrize("factor", [2, 3])
def test_tiles_are_the_exact_pixels_of_image_hr(tiny_spec, factor):
    """The backbone gets [bilinear (no antialias) view at H x W, then the u x u crops of image_hr]:
    a known pattern's tiles arrive pixel for pixel."""
    backbone = make_tiny_backbone()
    sent = []
    real = backbone.last_layer
    backbone.last_layer = lambda x: (sent.append(x.clone()), real(x))[1]
    fs = fitted(tiny_spec, backbone, factor)
    sent.clear()
    b, h, w = 2, 32, 48
    ys = torch.arange(factor * h, dtype=torch.float32)[:, None]
    xs = torch.arange(factor * w, dtype=torch.float32)[None, :]
    pattern = torch.stack([ys * 1000 + xs, (xs - ys).sin(), (ys * 0.37).cos() * xs])  # (3, uH, uW), no two pixels alike
    hr = pattern[None] + torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1) * 1e5
    with torch.no_grad():
        out = fs.eval()(torch.zeros(b, 3, h, w), {}, backbone, image_hr=hr)
    assert out.shape == (b, tiny_spec.embed_dim, factor * h // 16, factor * w // 16)
    (x,) = sent
    assert x.shape == (b * (1 + factor ** 2), 3, h, w)
    torch.testing.assert_close(x[:b], F.interpolate(hr, size=(h, w), mode="bilinear", antialias=False))
    for ty in range(factor):
        for tx in range(factor):
            t = b + (ty * factor + tx) * b
            assert torch.equal(x[t:t + b], hr[:, :, ty * h:(ty + 1) * h, tx * w:(tx + 1) * w])
    # a picture at another size is brought to u*H x u*W first; no image_hr: the working image's enlargement
    sent.clear()
    with torch.no_grad():
        fs(hr[:, :, :h, :w], {}, backbone)
    assert torch.equal(sent[0][:b], hr[:, :, :h, :w])


def brute_block(blk: FusionBlock, x: torch.Tensor) -> torch.Tensor:
    """FeatSharp's block pixel by pixel, (H, W, 2C) -> (H, W, C), from its weights only."""
    h, w, dim = x.shape
    c, nh, r = blk.out_dim, blk.attn.num_heads, blk.attn.window // 2
    d, dp = dim // nh, 1 << math.ceil(math.log2(dim // nh))
    slopes = alibi_slopes(nh)
    wq = blk.attn.qkv.weight.view(3, nh, dp, dim)
    n1 = F.layer_norm(x, (dim,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    out = torch.empty(h, w, c, dtype=x.dtype)
    for y in range(h):
        for xx in range(w):
            heads = []
            for hd in range(nh):
                q = wq[0, hd] @ n1[y, xx]
                logits, vals = [], []
                for yy in range(max(0, y - r), min(h, y + r + 1)):
                    for x2 in range(max(0, xx - r), min(w, xx + r + 1)):
                        dist = abs(yy - y) if hd % 2 == 0 else abs(x2 - xx)
                        logits.append(q @ (wq[1, hd] @ n1[yy, x2]) / math.sqrt(d) - slopes[hd] * dist)
                        vals.append((wq[2, hd] @ n1[yy, x2])[:d])
                a = torch.softmax(torch.stack(logits), 0)
                heads.append((a[:, None] * torch.stack(vals)).sum(0))
            attn = blk.attn.proj.weight @ torch.cat(heads) + blk.attn.proj.bias
            z = x[y, xx] + blk.ls1.gamma * attn
            n2 = F.layer_norm(z, (dim,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
            ab = blk.mlp.w12.weight @ n2 + blk.mlp.w12.bias
            hid = F.silu(ab[:len(ab) // 2]) * ab[len(ab) // 2:]
            out[y, xx] = z[:c] + blk.ls2.gamma * (blk.mlp.w3.weight @ hid + blk.mlp.w3.bias)
    return out


@pytest.mark.parametrize("c", [8, 24])  # head dim 2C/16 = 1 (a power of two), 3 (padded to 4)
def test_fusion_block_against_brute_force(c):
    torch.manual_seed(c)
    blk = FusionBlock(c, num_heads=16, window=5).double()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(std=0.5)
    x = torch.randn(6, 7, 2 * c, dtype=torch.float64)
    torch.testing.assert_close(blk(x[None])[0], brute_block(blk, x))


@pytest.mark.parametrize("factor", [2, 3])
def test_untrained_block_returns_the_jbu_map(tiny_backbone, tiny_spec, photo, factor):
    fs = fitted(tiny_spec, tiny_backbone, factor).eval()
    hr = F.interpolate(photo, scale_factor=factor, mode="bicubic")
    with torch.no_grad():
        fs.debias.normal_(std=0.5)  # a non-trivial de-bias must not break it
        out = fs(photo, {}, tiny_backbone, image_hr=hr)
        low, big = fs.views(photo, hr)
        lo = fs.normalised(tiny_backbone.last_layer(low))
        jbu = fs.phi_s.inverse(fs.jbu(lo, fs.guidance(big, out.shape[-2:])))
        torch.testing.assert_close(out, jbu, rtol=0, atol=1e-4 * jbu.abs().max().item())  # LayerScale 1e-6
        fs.block.ls1.gamma.fill_(0.1)
        fs.block.ls2.gamma.fill_(0.1)
        assert (fs(photo, {}, tiny_backbone, image_hr=hr) - jbu).abs().max() > 1e-2


def test_gradients_reach_upsampler_not_backbone(tiny_spec, photo):
    backbone = make_tiny_backbone()
    fs = perturbed(fitted(tiny_spec, backbone, 2, spectral_reparam=True)).train()
    out = DenseFeaturizer(backbone, fs)(photo)
    assert out.shape == (1, tiny_spec.embed_dim, 8, 12)
    (out.square().mean() + fs.target_transform(backbone.last_layer(photo)).square().mean()).backward()
    for name, p in fs.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())


def test_spectral_reparam_is_baked_at_export(tmp_path, tiny_backbone, tiny_spec, photo):
    torch.manual_seed(0)
    plain = fitted(tiny_spec, tiny_backbone, 2)
    sr = fitted(tiny_spec, tiny_backbone, 2, spectral_reparam=True)
    sr.load_state_dict({k: v for k, v in plain.state_dict().items() if "block." not in k}, strict=False)
    with torch.no_grad():  # registration keeps the weights: W * (softplus(s) + 0.05) / sigma(W) == W
        sr.eval()
        for lin in (sr.block.attn.qkv, sr.block.mlp.w12, sr.block.attn.proj):
            torch.testing.assert_close(lin.weight, lin.parametrizations.weight.original, rtol=1e-3, atol=1e-5)
    keys = sr.state_dict()
    assert "block.attn.qkv.parametrizations.weight.0.parts.2.scale" in keys
    assert "block.mlp.w3.parametrizations.weight.0.scale" in keys
    perturbed(sr).eval()
    exported = sr.for_export()
    assert exported.config["spectral_reparam"] is False and "block.attn.qkv.weight" in exported.state_dict()
    path = save_upsampler(tmp_path / "fs.safetensors", sr)
    back = load_upsampler(path, tiny_spec, method="featsharp").eval()
    assert not any("parametrizations" in k for k in back.state_dict()) and bool(back.phi_s.fitted)
    with torch.no_grad():
        torch.testing.assert_close(back(photo, {}, tiny_backbone), sr(photo, {}, tiny_backbone))


def release_checkpoint(fs: FeatSharp) -> dict:
    """``fs`` written the way the authors' training script writes one (DDP ``module.`` wrappers,
    the block's linears spectral-reparametrised, a training-only downsampler)."""
    sd = {}
    for k, v in fs.state_dict().items():
        if k.startswith("phi_s."):
            if k != "phi_s.fitted":
                sd["normalizer." + k[len("phi_s."):]] = v
        elif k == "debias":
            sd["bias_buffer.module.buffer"] = v
        else:
            sd["upsampler.module.ups.0." + k] = v
    for name, chunks in [("block.attn.qkv", 3), ("block.mlp.w12", 2), ("block.mlp.w3", 1)]:
        w = sd.pop(f"upsampler.module.ups.0.{name}.weight")
        key = f"upsampler.module.ups.0.{name}.parametrizations.weight"
        pieces = []
        for i, part in enumerate(w.chunk(chunks)):  # W_eff = original * (softplus(s) + 0.05) / sigma(original)
            sigma = torch.linalg.matrix_norm(part.double(), ord=2).item()
            s = torch.tensor([[sigma - 0.05 + math.log(-math.expm1(0.05 - sigma))]])  # softplus(s) + 0.05 = sigma
            pieces.append(part * (1.5 + i))  # any multiple: only its direction counts
            prefix = f"{key}.0." if chunks == 1 else f"{key}.0.parts.{i}."
            sd[prefix + "scale"] = s
            sd[prefix + "_sn_version"] = torch.tensor(2)
        sd[f"{key}.original"] = torch.cat(pieces)
    sd["downsampler.module.w"] = torch.ones(81)
    return {"model_state": sd, "upsample_args": {"type": "featsharp", "factor": fs.factor, "normalizer": "phi-s"},
            "train_config": {"lr": 5e-4}}


def test_release_layout_round_trip(tmp_path, tiny_backbone, tiny_spec, photo):
    fs = perturbed(fitted(tiny_spec, tiny_backbone, 2, debias_hw=(4, 6))).eval()
    path = tmp_path / "featsharp_release.pth"
    torch.save(release_checkpoint(fs), path)
    sd = read_state_dict(path)
    assert any("parametrizations" in k for k in sd)
    back = build_upsampler(dict(type="featsharp", factor=2), tiny_spec)  # its de-bias grid comes from the file
    back.load_release_state_dict(sd, source=str(path))
    assert back.config["debias_hw"] == [4, 6] and bool(back.phi_s.fitted)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(photo, {}, tiny_backbone), fs(photo, {}, tiny_backbone),
                                   rtol=1e-4, atol=1e-4)
    jafar = {k.replace("jbu.ups.0", "jafar.up"): v for k, v in sd.items()}
    with pytest.raises(WeightFileError, match="JAFAR.*featsharp.no-ln.inputs-jafar-tiles"):
        build_upsampler(dict(type="featsharp"), tiny_spec).load_release_state_dict(jafar)
    no_ln = {k: v for k, v in sd.items() if ".norm1." not in k and ".norm2." not in k}
    with pytest.raises(WeightFileError, match="without LayerNorm"):
        build_upsampler(dict(type="featsharp"), tiny_spec).load_release_state_dict(no_ln)
    with pytest.raises(WeightFileError, match="factor 3"):
        build_upsampler(dict(type="featsharp", factor=3), tiny_spec).load_release_state_dict(sd)


def test_unfitted_and_missing_backbone_refused(tiny_backbone, tiny_spec, photo):
    fs = build_upsampler(dict(type="featsharp"), tiny_spec)
    with pytest.raises(RuntimeError, match="finish_calibration"):
        fs(photo, {}, tiny_backbone)
    with pytest.raises(ValueError, match="backbone"):
        fitted(tiny_spec, tiny_backbone)(photo, {})

