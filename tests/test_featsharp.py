"""FeatSharp as released: real high-resolution tiles, the fusion block (against a per-pixel brute
force), inits, spectral reparametrisation baked at export, and the authors' checkpoint layout: a
release ``model_state`` gives the output of an independent transcription of the release's code."""
from __future__ import annotations

import math
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_backbone, normalise

from brixel_plugins.backbones.dinov3 import BackboneSpec
from brixel_plugins.backbones.weights import WeightFileError, read_state_dict
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.files.upsampler_file import load_upsampler, save_upsampler
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.featsharp import FeatSharp, FusionBlock, swiglu_hidden
from brixel_plugins.upsamplers.layers.local_attention import alibi_slopes


def fitted(spec, backbone, factor=2, seed=0, **kw) -> FeatSharp:
    torch.manual_seed(seed)
    fs = build_upsampler(dict(type="featsharp", factor=factor, **kw), spec)
    fs.calibrate(backbone.last_layer_map(torch.randn(3, 3, 64, 64)))
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
    assert layer.range_alpha == 0 and layer.spatial_alpha == 0  # the release's exp(alpha) = 1
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
    real = backbone.last_layer_map
    backbone.last_layer_map = lambda x: (sent.append(x.clone()), real(x))[1]
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
        lo = fs.normalised(tiny_backbone.last_layer_map(low))
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
    (out.square().mean() + fs.target_transform(backbone.last_layer_map(photo)).square().mean()).backward()
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
    assert "block.attn.qkv.parametrizations.weight.0.parts.2.sn_scale" in keys  # named as the release names it
    assert "block.mlp.w3.parametrizations.weight.0.sn_scale" in keys
    assert "block.mlp.w3.parametrizations.weight.0._sn_version" in keys
    perturbed(sr).eval()
    exported = sr.for_export()
    assert exported.config["spectral_reparam"] is False and "block.attn.qkv.weight" in exported.state_dict()
    path = save_upsampler(tmp_path / "fs.safetensors", sr)
    back = load_upsampler(path, tiny_spec, method="featsharp").eval()
    assert not any("parametrizations" in k for k in back.state_dict()) and bool(back.phi_s.fitted)
    with torch.no_grad():
        torch.testing.assert_close(back(photo, {}, tiny_backbone), sr(photo, {}, tiny_backbone))


# -- the authors' release ------------------------------------------------------------------------
# An independent reading of NVlabs/FeatSharp (featsharp/upsampler_modules/{featsharp,featup,util}.py,
# featsharp/enable_spectral_reparam.py): how its training script names what it saves, and what its
# modules compute. These helpers use none of the project's code; the tests compare the project with them.
def release_prime_factors(n: int) -> list:
    """hadamard.py ``get_prime_factors``: 12 -> [2, 2, 3] (one JBU level each)."""
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def release_model_state(c: int, u: int, grid: Tuple[int, int], spectral: bool, ddp: str, seed: int = 0) -> dict:
    """A FeatSharp ``model_state`` as the release writes it (one fusion level, JBU + tiles inputs,
    LayerNorm, PHI-S normaliser, bias buffer at the token ``grid``), every tensor seeded random (no
    zero or 1e-6 init left). ``spectral``: the block's linears as ``enable_spectral_reparam`` leaves
    them (``original`` + per-chunk ``sn_scale``, ``_u``, ``_v``, ``_sn_version``). ``ddp``: where
    DistributedDataParallel put its ``module.``: ``'parts'`` (upsampler and bias buffer wrapped each)
    or ``'model'`` (one wrapper around everything)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=g) * std + mean

    two_c, heads = 2 * c, 16
    head_pad = 1 << math.ceil(math.log2(two_c // heads))  # AlibiAttention's np2
    # DINOv2's Block calls its ffn_layer with hidden_features=int(2C * mlp_ratio 4), which overrides the
    # partial's 4C; SwiGLUFFNFused then takes 2/3 of it, rounded up to a multiple of 8
    hidden = (int(8 * c * 2 / 3) + 7) // 8 * 8
    lvl = "upsampler.module.ups.0." if ddp == "parts" else "upsampler.ups.0."
    sd = {lvl + "tile_pos": rnd(1, c, u, u, std=0.5)}
    for i in range(len(release_prime_factors(u))):
        jbu = f"{lvl}jbu.ups.{i}."
        sd.update({jbu + "range_temp": rnd(std=0.5), jbu + "sigma_spatial": rnd(std=0.2, mean=1.0),
                   jbu + "range_alpha": rnd(), jbu + "spatial_alpha": rnd(),
                   jbu + "range_proj.0.weight": rnd(32, 3, 1, 1, std=0.5), jbu + "range_proj.0.bias": rnd(32, std=0.1),
                   jbu + "range_proj.2.weight": rnd(32, 32, 1, 1, std=0.2),
                   jbu + "range_proj.2.bias": rnd(32, std=0.1)})
    linears = {"attn.qkv": (3 * heads * head_pad, two_c, 3, False), "attn.proj": (two_c, two_c, 1, True),
               "mlp.w12": (2 * hidden, two_c, 2, True), "mlp.w3": (c, hidden, 1, True)}
    blk = lvl + "block."
    for norm in ("norm1", "norm2"):
        sd[f"{blk}{norm}.weight"], sd[f"{blk}{norm}.bias"] = rnd(two_c, std=0.1, mean=1.0), rnd(two_c, std=0.1)
    sd[blk + "ls1.gamma"], sd[blk + "ls2.gamma"] = rnd(two_c, std=0.3), rnd(c, std=0.3)
    for name, (rows, cols, chunks, bias) in linears.items():
        w = rnd(rows, cols, std=cols ** -0.5)
        if bias:
            sd[f"{blk}{name}.bias"] = rnd(rows, std=0.1)
        if not spectral:
            sd[f"{blk}{name}.weight"] = w
            continue
        par = f"{blk}{name}.parametrizations.weight."
        sd[par + "original"] = w
        for i, part in enumerate(w.chunk(chunks)):
            pre = par + ("0." if chunks == 1 else f"0.parts.{i}.")
            v = F.normalize(rnd(cols), dim=0)
            for _ in range(30):  # the power iterations training ran (torch's _SpectralNorm order)
                uu = F.normalize(part @ v, dim=0)
                v = F.normalize(part.T @ uu, dim=0)
            sd.update({pre + "sn_scale": rnd(1, 1, std=0.3, mean=1.0), pre + "_u": uu, pre + "_v": v,
                       pre + "_sn_version": torch.tensor(2)})
    rotation = torch.linalg.qr(rnd(c, c))[0]
    sd.update({"normalizer.mean": rnd(c, std=0.5), "normalizer.alpha": rnd(std=0.1, mean=1.5).abs(),
               "normalizer.rotation": rotation, "normalizer.inv_rotation": rotation.T.contiguous()})
    sd["bias_buffer.module.buffer" if ddp == "parts" else "bias_buffer.buffer"] = rnd(1, c, *grid, std=0.3)
    if ddp == "model":
        sd = {"module." + k: v for k, v in sd.items()}
    return sd


def release_weight(sd: dict, name: str, chunks: int) -> torch.Tensor:
    """The weight ``name`` as the release's forward sees it: plain, or ``_SNReweight`` in eval mode
    per chunk, ``W * (softplus(sn_scale) + 0.05) / (u . W v + 1e-6)``."""
    if name + ".weight" in sd:
        return sd[name + ".weight"]
    par = name + ".parametrizations.weight."
    out = []
    for i, part in enumerate(sd[par + "original"].chunk(chunks)):
        pre = par + ("0." if chunks == 1 else f"0.parts.{i}.")
        gain = F.softplus(sd[pre + "sn_scale"]) + 0.05
        out.append(part * (gain / (sd[pre + "_u"] @ part @ sd[pre + "_v"] + 1e-6)))
    return torch.cat(out)


def release_jbu_level(p: dict, source: torch.Tensor, guidance: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """featup.py ``JBULevel.forward``: unfold, softmax range kernel x exp(range_alpha), Gaussian x
    exp(spatial_alpha), normalised (floor 1e-7), applied to the bilinear enlargement."""
    b, _, gh, gw = guidance.shape
    d = 2 * radius + 1
    proj = F.conv2d(F.gelu(F.conv2d(guidance, p["range_proj.0.weight"], p["range_proj.0.bias"])),
                    p["range_proj.2.weight"], p["range_proj.2.bias"])
    queries = F.unfold(F.pad(proj, [radius] * 4, mode="reflect"), d).view(b, 32, d * d, gh, gw)
    temp = p["range_temp"].exp().clamp(1e-4, 1e4)
    range_k = p["range_alpha"].exp() * torch.softmax(temp * torch.einsum("bcphw,bchw->bphw", queries, proj), dim=1)
    t = torch.linspace(-1, 1, d)
    y, x = torch.meshgrid(t, t, indexing="ij")
    spatial = (p["spatial_alpha"].exp()
               * torch.exp(-(x ** 2 + y ** 2) / (2 * p["sigma_spatial"] ** 2)).view(1, d * d, 1, 1))
    kernel = range_k * spatial
    kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
    hr = F.interpolate(source, (gh, gw), mode="bilinear", align_corners=False)
    patches = F.unfold(F.pad(hr, [radius] * 4, mode="reflect"), d).view(b, -1, d * d, gh, gw)
    return torch.einsum("bcphw,bphw->bchw", patches, kernel)


def release_forward(sd: dict, backbone, image_hr: torch.Tensor, res: int, u: int) -> torch.Tensor:
    """What the release computes for pictures ``image_hr`` (B, 3, u*res, u*res) at model resolution
    ``res``: ``create_tiles`` (one backbone call on the bilinear low-res view and the u x u tiles),
    normaliser + bias buffer, ``AttentionLevel`` (JBU of the low-res map guided by the picture resized
    bilinearly to the output grid; tiles + tile_pos; the DINOv2 block with 16-head windowed ALiBi
    attention on a sequence zero-padded to a multiple of 128, SwiGLU to C, LayerScale), then the
    inverse normaliser."""
    sd = {k.removeprefix("module.").replace(".module.", "."): v for k, v in sd.items()}
    lvl = {k[len("upsampler.ups.0."):]: v for k, v in sd.items() if k.startswith("upsampler.ups.0.")}
    c = lvl["tile_pos"].shape[1]
    b = image_hr.shape[0]
    low = F.interpolate(image_hr, (res, res), mode="bilinear", align_corners=False)
    big = F.interpolate(image_hr, (u * res, u * res), mode="bilinear", align_corners=False)
    tiles = big.view(b, 3, u, res, u, res).permute(0, 2, 4, 1, 3, 5).reshape(b * u * u, 3, res, res)  # (b h w)
    feats = backbone.last_layer_map(torch.cat([low, tiles]))
    alpha, mean = sd["normalizer.alpha"], sd["normalizer.mean"].view(1, -1, 1, 1)
    feats = alpha * torch.einsum("oc,bchw->bohw", sd["normalizer.rotation"], feats - mean) + sd["bias_buffer.buffer"]
    lr, n = feats[:b], feats.shape[-1]
    hr_tiles = feats[b:].view(b, u, u, c, n, n).permute(0, 3, 1, 4, 2, 5).reshape(b, c, u * n, u * n)
    width = u * n
    guidance = F.interpolate(image_hr, (width, width), mode="bilinear", align_corners=False)
    source = lr
    for level, factor in enumerate(release_prime_factors(u)):  # featup.py JBUStack
        jp = {k[len(f"jbu.ups.{level}."):]: v for k, v in lvl.items() if k.startswith(f"jbu.ups.{level}.")}
        size = source.shape[-1] * factor
        source = release_jbu_level(jp, source, F.adaptive_avg_pool2d(guidance, (size, size)))
    tile_pos = lvl["tile_pos"].repeat_interleave(n, dim=2).repeat_interleave(n, dim=3)
    x = torch.cat([source, hr_tiles + tile_pos], dim=1).flatten(2).transpose(1, 2)  # (B, N, 2C)
    blk = {k[len("block."):]: v for k, v in lvl.items() if k.startswith("block.")}
    two_c, heads = 2 * c, 16
    hd = two_c // heads
    hp = 1 << math.ceil(math.log2(hd))
    n_tok = x.shape[1]
    n_pad = (n_tok + 127) // 128 * 128
    h1 = F.layer_norm(x, (two_c,), blk["norm1.weight"], blk["norm1.bias"])
    h1 = torch.cat([h1, h1.new_zeros(b, n_pad - n_tok, two_c)], dim=1)
    q, k, v = (h1 @ release_weight(blk, "attn.qkv", 3).T).view(b, n_pad, 3, heads, hp).permute(2, 0, 3, 1, 4)
    idx = torch.arange(n_pad)
    dr = (idx[:, None] // width) - (idx[None, :] // width)
    dc = (idx[:, None] % width) - (idx[None, :] % width)
    slopes = 1 / 2 ** (torch.arange(2, heads + 2) // 2).float()
    delta = torch.where(torch.arange(heads).view(-1, 1, 1) % 2 == 0, dr, dc).abs()
    allowed = (((idx[:, None] < n_tok) & (idx[None, :] < n_tok)) | (idx[:, None] == idx[None, :])) & \
        (dr.abs() <= 3) & (dc.abs() <= 3)
    scores = (q @ k.transpose(-1, -2)) * hd ** -0.5 - slopes.view(-1, 1, 1) * delta
    attn = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v  # (B, heads, N', hp)
    attn = attn[..., :hd].transpose(1, 2).reshape(b, n_pad, two_c)[:, :n_tok]
    attn = attn @ release_weight(blk, "attn.proj", 1).T + blk["attn.proj.bias"]
    x = x + blk["ls1.gamma"] * attn
    h2 = F.layer_norm(x, (two_c,), blk["norm2.weight"], blk["norm2.bias"])
    gate, value = (h2 @ release_weight(blk, "mlp.w12", 2).T + blk["mlp.w12.bias"]).chunk(2, dim=-1)
    mlp = (F.silu(gate) * value) @ release_weight(blk, "mlp.w3", 1).T + blk["mlp.w3.bias"]
    y = (x[..., :c] + blk["ls2.gamma"] * mlp).transpose(1, 2).reshape(b, c, width, width)
    return torch.einsum("oc,bchw->bohw", sd["normalizer.inv_rotation"], y / alpha) + mean


@pytest.fixture(scope="module")
def vits_width_backbone():
    """A real DINOv3 at ViT-S width (C = 384) but one block: the release comparison at C = 384 in ms."""
    return make_tiny_backbone(depth=1, embed_dim=384, num_heads=6)


@pytest.mark.parametrize("res, spectral, ddp", [(128, True, "parts"), (96, True, "model"),
                                                 (128, False, "model"), (96, False, "parts")])
def test_release_checkpoint_gives_the_release_output(tmp_path, vits_width_backbone, res, spectral, ddp):
    """C = 384, u = 2: a 16 x 16 output grid (256 tokens, no padding in the release's attention) and a
    12 x 12 one (144, zero-padded to 256); the block's linears spectrally reparametrised or plain; DDP
    wrappers on the parts or on the whole model. Loaded from the file the release writes, the
    project's FeatSharp gives the release's output."""
    from skimage import data

    backbone, u, grid = vits_width_backbone, 2, (res // 16, res // 16)
    sd = release_model_state(384, u, grid, spectral, ddp, seed=res + spectral)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state": sd, "upsample_args": {"upsampler": "featsharp", "upsample_factor": u},
                "epoch": 3}, path)
    fs = build_upsampler(dict(type="featsharp", factor=u), backbone.spec)
    fs.load_release_state_dict(read_state_dict(path), source=str(path))
    assert fs.config["debias_hw"] == list(grid) and not fs.config["spectral_reparam"]
    hr = torch.cat([normalise(data.astronaut(), (u * res, u * res)), normalise(data.chelsea(), (u * res, u * res))])
    with torch.no_grad():
        ref = release_forward(sd, backbone, hr, res, u)
        out = fs.eval()(F.interpolate(hr, (res, res), mode="bilinear"), {}, backbone, image_hr=hr)
        assert out.shape == ref.shape == (2, 384, u * grid[0], u * grid[1])
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        # equality means something: without the fused tiles (LayerScales at 0) the release's output
        # differs by 100x the tolerance
        no_block = {k: (0 * v if k.endswith(("ls1.gamma", "ls2.gamma")) else v) for k, v in sd.items()}
        assert (release_forward(no_block, backbone, hr, res, u) - ref).abs().max() > 1e-2 * ref.abs().max()


def test_release_jbu_alphas_and_guidance(tiny_spec):
    """The release's ``exp(alpha)`` scalars cancel in the normalised kernel (any stored value gives the
    same output, unlike exponents would), and the guidance is resized without antialiasing."""
    from brixel_plugins.upsamplers.jbu import FeatSharpJBUStack

    torch.manual_seed(0)
    stack = FeatSharpJBUStack(8, 2)
    source, guidance = torch.randn(1, 8, 5, 6), torch.randn(1, 3, 10, 12)
    p = {k[len("ups.0."):]: v for k, v in stack.state_dict().items()}
    with torch.no_grad():
        before = stack(source, guidance)
        torch.testing.assert_close(before, release_jbu_level(p, source, guidance))
        stack.ups[0].range_alpha.fill_(-3.0)
        stack.ups[0].spatial_alpha.fill_(2.5)
        torch.testing.assert_close(stack(source, guidance), before)
    fs = build_upsampler(dict(type="featsharp", factor=2), tiny_spec)
    big = torch.rand(1, 3, 64, 96)
    torch.testing.assert_close(fs.guidance(big, (8, 12)), F.interpolate(big, (8, 12), mode="bilinear"))


def test_release_layout_refusals(tiny_spec):
    """The de-bias grid comes from the file; anything else than the release's layout is a
    WeightFileError that names what is wrong."""
    sd = release_model_state(tiny_spec.embed_dim, 2, (4, 6), spectral=True, ddp="parts")
    back = build_upsampler(dict(type="featsharp", factor=2), tiny_spec)
    back.load_release_state_dict({"model_state": sd})
    assert back.config["debias_hw"] == [4, 6] and bool(back.phi_s.fitted)
    scale_key = "upsampler.module.ups.0.block.mlp.w3.parametrizations.weight.0.sn_scale"
    bad = {**{k: v for k, v in sd.items() if k != scale_key}, scale_key[:-len("sn_scale")] + "scale": sd[scale_key]}
    with pytest.raises(WeightFileError, match=r"block\.mlp\.w3\.parametrizations\.weight\.0\.scale"):
        build_upsampler(dict(type="featsharp"), tiny_spec).load_release_state_dict(bad)
    u_key = "upsampler.module.ups.0.block.attn.qkv.parametrizations.weight.0.parts.1._u"
    with pytest.raises(WeightFileError, match=r"qkv\.parametrizations\.weight\.0\.parts\.1\._u"):
        build_upsampler(dict(type="featsharp"), tiny_spec).load_release_state_dict({**sd, u_key: torch.ones(3)})
    orphan = "upsampler.module.ups.0.block.attn.proj.parametrizations.weight.0.sn_scale"
    no_original = {k: v for k, v in sd.items() if "attn.proj.parametrizations.weight.original" not in k}
    with pytest.raises(WeightFileError, match=r"attn\.proj\.parametrizations\.weight\.0"):
        build_upsampler(dict(type="featsharp"), tiny_spec).load_release_state_dict(no_original)
    assert orphan in no_original
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



def test_recipe_gives_the_spectral_scales_their_own_learning_rate(tiny_spec):
    """The release recipe's group (lr 5e-5, weight decay 0.01) selects every learned spectral scale
    (``sn_scale``) and nothing else: an empty group would train them at the base rate silently."""
    import re
    from pathlib import Path

    from mmengine.config import Config

    cfg = Config.fromfile(str(Path(__file__).parents[1] / "configs" / "distill" / "featsharp_vits16.py"))
    (group,) = [g for g in cfg.optim_wrapper.paramwise_cfg.groups if g.get("lr") == 5e-5]
    fs = build_upsampler(dict(cfg.model.upsampler, debias_hw=(4, 4)), tiny_spec)
    assert fs.config["spectral_reparam"]
    picked = [n for n, _ in fs.named_parameters() if re.search(group["pattern"], "upsampler." + n)]
    assert picked and all(n.endswith("sn_scale") for n in picked)
    # q, k, v, proj, 2 x w12, w3
    assert len(picked) == sum(n.endswith("sn_scale") for n, _ in fs.named_parameters()) == 7


def test_bake_reads_the_release_versions_and_unnormalised_chunks():
    """``_sn_version`` 2: gain softplus(sn_scale) + 0.05; no ``_sn_version`` (the release reads it
    as version 1): gain sn_scale itself; a qkv chunk without entries (``renorm_values=False``, the
    release's Identity) stays as stored."""
    from brixel_plugins.upsamplers.layers.spectral_reparam import bake_spectral_state_dict

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    u, v = F.normalize(torch.randn(2, generator=g, dtype=torch.float64), dim=0), F.normalize(
        torch.randn(4, generator=g, dtype=torch.float64), dim=0)
    s = torch.tensor([[0.7]], dtype=torch.float64)
    par = "attn.qkv.parametrizations.weight."
    sd = {par + "original": w, par + "0.parts.0.sn_scale": s, par + "0.parts.0._u": u, par + "0.parts.0._v": v,
          par + "0.parts.0._sn_version": torch.tensor(2),
          par + "0.parts.1.sn_scale": s, par + "0.parts.1._u": u, par + "0.parts.1._v": v}
    baked = bake_spectral_state_dict(sd)["attn.qkv.weight"]
    sigma0, sigma1 = u @ w[:2] @ v + 1e-6, u @ w[2:4] @ v + 1e-6
    torch.testing.assert_close(baked[:2], w[:2] * (F.softplus(s) + 0.05) / sigma0)
    torch.testing.assert_close(baked[2:4], w[2:4] * s / sigma1)
    assert torch.equal(baked[4:], w[4:])
