"""AnyUp equals the authors' computation on their key layout, chunked or not, and loads their files."""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones import WeightFileError
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.files.upsampler_file import load_upsampler
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.anyup import release_shapes


# -- the release's forward, transcribed from its description (unfold / einsum / loops, whole maps) ----------
def _conv(x, weight, pad_mode=None):
    """A bias-free convolution as patches x weights; ``pad_mode``: None (no padding), zeros or reflect."""
    k = weight.shape[-1]
    if pad_mode == "reflect":
        x = F.pad(x, (k // 2,) * 4, mode="reflect")
    elif pad_mode == "zeros":
        x = F.pad(x, (k // 2,) * 4)
    b, _, h, w = x.shape
    cols = F.unfold(x, k)  # (B, Cin*k*k, L)
    out = torch.einsum("of,bfl->bol", weight.reshape(weight.shape[0], -1), cols)
    return out.reshape(b, -1, h - k + 1, w - k + 1)


def _group_norm(x, weight, bias, groups=8, eps=1e-5):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(b, c, h, w)
    return y * weight[:, None, None] + bias[:, None, None]


def _resblock(sd, p, x):
    y = _conv(F.silu(_group_norm(x, sd[p + "block.0.weight"], sd[p + "block.0.bias"])),
              sd[p + "block.2.weight"])
    y = _conv(F.silu(_group_norm(y, sd[p + "block.3.weight"], sd[p + "block.3.bias"])),
              sd[p + "block.5.weight"])
    return x + y


def _encoder(sd, name, x, first):
    return _resblock(sd, f"{name}.2.", _resblock(sd, f"{name}.1.", first(x)))


def _pool_matrix(n_in, n_out):
    """Adaptive average pooling along one axis: bin i averages [floor(i n_in / n_out), ceil((i+1) n_in / n_out))."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _pool(x, size):
    return torch.einsum("ih,bchw,jw->bcij", _pool_matrix(x.shape[-2], size[0]), x, _pool_matrix(x.shape[-1], size[1]))


def _lfu(basis, feats):
    b, c, h, w = feats.shape
    m, k = basis.shape[0], basis.shape[-1]
    patches = F.unfold(F.pad(feats, (k // 2,) * 4), k).reshape(b, c, k * k, h * w)
    taps = F.unfold(F.pad(torch.ones(1, 1, h, w), (k // 2,) * 4), k).sum(1)  # in-bounds taps per pixel
    x = torch.einsum("jt,bctl->bcjl", basis.reshape(m, k * k), patches) / taps  # (B, C, M, hw): index c*M + j
    x = x.reshape(b, m, c, h * w)  # the release's view
    return torch.softmax(x, dim=1).mean(dim=2).reshape(b, m, h, w)


def release_anyup(sd, image, feats, out_size, ratio=0.1):
    """AnyUp.forward(image, feats, out_size) of the release (paper model, non-NATTEN), from its state dict."""
    b, c, h, w = feats.shape
    hh, ww = image.shape[-2:]
    enc = _encoder(sd, "image_encoder", image, lambda x: _conv(x, sd["image_encoder.0.weight"]))
    coords = torch.stack(torch.meshgrid(torch.linspace(0, 1, hh), torch.linspace(0, 1, ww), indexing="ij"), -1)
    angle = coords.reshape(-1, 2) @ sd["rope.freqs"]  # (HW, 128)
    tok = enc.flatten(2).transpose(1, 2)
    rot = torch.cat([-tok[..., 64:], tok[..., :64]], -1)
    tok = tok * angle.cos() + rot * angle.sin()
    enc = tok.transpose(1, 2).reshape(b, 128, hh, ww)
    q = _pool(_encoder(sd, "query_encoder", enc, lambda x: _conv(x, sd["query_encoder.0.weight"])), out_size)
    k = _pool(_encoder(sd, "key_encoder", enc, lambda x: _conv(x, sd["key_encoder.0.weight"])), (h, w))
    unified = _encoder(sd, "key_features_encoder", feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12),
                       lambda x: _lfu(sd["key_features_encoder.0.basis"], x))
    k = _encoder(sd, "aggregation", torch.cat([k, unified], 1),
                 lambda x: _conv(x, sd["aggregation.0.weight"], pad_mode="reflect"))
    q = _conv(q, sd["cross_decode.conv2d.weight"], pad_mode="zeros")
    qt, kt = q.flatten(2).transpose(1, 2), k.flatten(2).transpose(1, 2)
    eps = torch.finfo(torch.float32).eps
    att = "cross_decode.cross_attn."
    qt = qt / torch.sqrt((qt ** 2).mean(-1, keepdim=True) + eps) * sd[att + "norm_q.weight"]
    kt = kt / torch.sqrt((kt ** 2).mean(-1, keepdim=True) + eps) * sd[att + "norm_k.weight"]
    wi, bi = sd[att + "attention.in_proj_weight"], sd[att + "attention.in_proj_bias"]
    qp = (qt @ wi[:128].T + bi[:128]).reshape(b, -1, 4, 32)
    kp = (kt @ wi[128:256].T + bi[128:256]).reshape(b, -1, 4, 32)
    logits = torch.einsum("bqnd,bknd->bnqk", qp, kp) / math.sqrt(32)
    if ratio > 0:
        oh, ow = out_size
        blocked = torch.ones(oh * ow, h * w, dtype=torch.bool)

        def window(i, n_out, n):  # output pixel i of n_out (its centre in float32) -> the tokens [lo, hi) it sees
            centre = torch.tensor(i + 0.5, dtype=torch.float32) / n_out
            return int(torch.floor((centre - ratio).clamp(0, 1) * n)), int(torch.ceil((centre + ratio).clamp(0, 1) * n))

        col_ok = torch.zeros(ow, w, dtype=torch.bool)
        for j in range(ow):
            c0, c1 = window(j, ow, w)
            col_ok[j, c0:c1] = True
        for i in range(oh):
            r0, r1 = window(i, oh, h)
            row_ok = torch.zeros(h, dtype=torch.bool)
            row_ok[r0:r1] = True
            blocked[i * ow:(i + 1) * ow] = ~(row_ok[None, :, None] & col_ok[:, None, :]).reshape(ow, h * w)
        logits = logits.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(logits, -1).mean(1)  # heads averaged
    out = weights @ feats.flatten(2).transpose(1, 2)  # V = the raw features
    return out.transpose(1, 2).reshape(b, c, *out_size)


def release_state_dict(seed=0):
    """Seeded non-trivial weights in the authors' layout: every parameter random (GroupNorm affines,
    RMSNorm weights and biases included, which start at 1 / 0), RoPE at its init plus noise."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in release_shapes().items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        if k.endswith("block.0.weight") or k.endswith("block.3.weight") or "norm_" in k:
            sd[k] = 1 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        elif k == "rope.freqs":
            sd[k] = torch.randn(shape, generator=g) * 3
        else:
            sd[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    sd["key_features_encoder.0.basis"] *= 5  # peakier softmax over the unified channels
    return sd


def _anyup(spec, sd=None, **kw):
    up = build_upsampler(dict(type="anyup", **kw), spec)
    return up.load_release_state_dict(sd if sd is not None else release_state_dict(), source="test")


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("ratio", [0.1, 0.0])
def test_equals_release_computation_at_any_size(tiny_spec, ratio):
    """A 5x7 grid of 64 channels, a 48x64 image: a non-integer 37x53 output and the image's size."""
    torch.manual_seed(0)
    sd = release_state_dict()
    up = _anyup(tiny_spec, sd, window_ratio=ratio).eval()
    image, feats = torch.randn(2, 3, 48, 64), torch.randn(2, 64, 5, 7) * 3
    with torch.no_grad():
        for size in [(37, 53), (48, 64)]:
            out = up.upsample(image, feats, size)
            ref = release_anyup(sd, image, feats, size, ratio)
            assert out.shape == ref.shape == (2, 64, *size)
            assert _relative(out, ref) <= 1e-5, (size, _relative(out, ref))
    # the output is a convex combination of the input vectors: inside their range
    assert out.amax() <= feats.amax() + 1e-5 and out.amin() >= feats.amin() - 1e-5


def test_chunked_equals_unchunked(tiny_spec):
    """Attention in tiles of at most 50 queries, image-size maps in bands of 2 rows, in place, and
    the feature unification in bands of 2 token rows give the all-at-once computation."""
    sd = release_state_dict(1)
    whole = _anyup(tiny_spec, sd, q_chunk_size=None).eval()
    chunked = _anyup(tiny_spec, sd, q_chunk_size=50).eval()
    chunked.stream_bytes = 16 * 128 * 64 * 4  # the image-size maps (128 x 48 x 64 floats) go in bands of 2 rows
    chunked.key_features_encoder[0].band_bytes = 2 * 48 * 128 * 7 * 4  # the unification in bands of 2 token rows
    image, feats = torch.randn(1, 3, 48, 64), torch.randn(1, 48, 5, 7)
    with torch.no_grad():
        for size in [(37, 53), (48, 64)]:
            a, b = chunked.upsample(image, feats, size), whole.upsample(image, feats, size)
            assert _relative(a, b) <= 1e-5, (size, _relative(a, b))
    assert chunked.tile(37, 53) == (7, 7)  # 49 <= 50 queries, square


def test_interface_sizes_layer_and_featurizer(tiny_backbone, photo):
    """Without output_size: factor x the grid of the layer asked for; any size through DenseFeaturizer."""
    torch.manual_seed(0)
    up = build_upsampler(dict(type="anyup", layer=1), tiny_backbone.spec).eval()
    assert up.layer_indices == (1,) and up.factor == 4 and up.any_output_size
    layers = tiny_backbone.layers(photo, [1])
    with torch.no_grad():
        assert up(photo, layers).shape == (1, 64, 16, 24)
        torch.testing.assert_close(up(photo, layers, output_size=(21, 13)), up.upsample(photo, layers[1], (21, 13)))
        f = DenseFeaturizer(tiny_backbone, build_upsampler(dict(type="anyup"), tiny_backbone.spec).eval(),
                            output_size=(64, 96))
        assert f(photo).shape == (1, 64, 64, 96)
        assert f.features(photo, output_scale=2.5)[0].shape == (1, 64, 10, 15)


def test_zero_start_is_bilinear_and_trains(tiny_backbone, photo):
    up = build_upsampler(dict(type="anyup", zero_start=True), tiny_backbone.spec).train()
    layers = tiny_backbone.layers(photo, up.layer_indices)
    out = up(photo, layers, output_size=(20, 30))
    ref = F.interpolate(layers[3], size=(20, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    out.square().mean().backward()
    assert up.gate.gate.grad.abs().sum() > 0
    with pytest.raises(WeightFileError, match="no zero start"):
        up.load_release_state_dict(release_state_dict())


def test_release_layout_params_and_refusals(tiny_spec):
    shapes = release_shapes()
    assert len(shapes) == 73 and sum(math.prod(s) for s in shapes.values()) == 878_080
    up = build_upsampler(dict(type="anyup"), tiny_spec)
    assert sum(p.numel() for p in up.parameters()) == 878_080 - 33_024  # the dead value / output projections
    sd = release_state_dict()
    _anyup(tiny_spec, {f"module.{k}": v for k, v in sd.items()})  # a DDP prefix is fine
    for bad, key in [({**sd, "extra.weight": torch.zeros(1)}, "extra.weight"),
                     ({k: v for k, v in sd.items() if k != "aggregation.0.weight"}, "aggregation.0.weight"),
                     ({**sd, "rope.freqs": torch.zeros(2, 64)}, r"rope.freqs \(2, 64\) \(release: \(2, 128\)\)"),
                     ({**sd, "cross_decode.cross_attn.attention.out_proj.bias": torch.zeros(3)},
                      "out_proj.bias")]:
        with pytest.raises(WeightFileError, match=f"not the released AnyUp layout.*{key}"):
            _anyup(tiny_spec, bad)


def test_convert_weights_tool_round_trip(tmp_path, tool_error):
    """tools/convert_weights.py anyup RELEASE.pth OUT.safetensors: the file loads and computes the same."""
    import runpy

    from brixel_plugins.backbones import FrozenDINOv3

    sd = release_state_dict(2)
    torch.save(sd, tmp_path / "anyup_paper.pth")
    tool = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "convert_weights.py"))
    tool["main"](["anyup", str(tmp_path / "anyup_paper.pth"), str(tmp_path / "anyup.safetensors"), "--arch", "vits16"])
    spec = FrozenDINOv3("vits16", device="meta").spec
    up = load_upsampler(tmp_path / "anyup.safetensors", spec).eval()
    image, feats = torch.randn(1, 3, 32, 48), torch.randn(1, 384, 2, 3)
    with torch.no_grad():
        assert _relative(up.upsample(image, feats, (9, 11)), release_anyup(sd, image, feats, (9, 11))) <= 1e-5
    torch.save({**sd, "rope.freqs": torch.zeros(2, 64)}, tmp_path / "bad.pth")
    assert re.search("error: .*rope.freqs", tool_error(tool["main"], ["anyup", str(tmp_path / "bad.pth"),
                                                                      str(tmp_path / "bad.safetensors"), "--arch",
                                                                      "vits16"]))
    assert not (tmp_path / "bad.safetensors").exists()
