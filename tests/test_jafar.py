"""JAFAR: equal to the authors' computation on their key layout, any output size, chunked attention,
released files load (and only they), registered and usable like every upsampler."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones import BackboneSpec, WeightFileError
from brixel_plugins.upsamplers import build_upsampler, list_upsamplers
from brixel_plugins.upsamplers.jafar import JAFAR, JafarCore, checkpoint_filter_fn, release_state_dict
from brixel_plugins.upsamplers.release_files import read_release_file

C = 64  # feature dim of the tests (the tiny backbone's)


def released_keys_and_shapes(c: int, k: int = 1) -> dict:
    """The 65 tensors of the authors' ``JAFAR(v_dim=c)`` state dict, written out from the spec."""
    shapes = {"rope.freqs": (2, 128), "sft_key.gamma.weight": (128, 128, 1, 1), "sft_key.beta.weight": (128, 128, 1, 1),
              "cross_decode.conv2d.weight": (128, 128, 3, 3)}
    for name, cin, ks in (("image_encoder", 3, k), ("query_encoder", 128, 1), ("key_encoder", 128, 1),
                          ("key_features_encoder", c, 1)):
        shapes[f"{name}.0.weight"] = (128, cin, ks, ks)
        for i in (1, 2):
            shapes.update({f"{name}.{i}.norm1.weight": (128,), f"{name}.{i}.norm1.bias": (128,),
                           f"{name}.{i}.conv1.weight": (128, 128, 1, 1), f"{name}.{i}.norm2.weight": (128,),
                           f"{name}.{i}.norm2.bias": (128,), f"{name}.{i}.conv2.weight": (128, 128, 1, 1)})
    a = "cross_decode.cross_attn."
    shapes.update({a + "norm_q.weight": (128,), a + "norm_k.weight": (128,), a + "norm_v.weight": (c,),
                   a + "attention.q_proj_weight": (128, 128), a + "attention.k_proj_weight": (128, 128),
                   a + "attention.v_proj_weight": (128, c), a + "attention.in_proj_bias": (384,),
                   a + "attention.out_proj.weight": (128, 128), a + "attention.out_proj.bias": (128,)})
    return shapes


def seeded_release(c: int = C, seed: int = 0, k: int = 1) -> dict:
    """Non-trivial weights in the authors' layout: every tensor random (norm scales around 1, the
    RoPE table around its initial frequencies, the dead value path random too)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in released_keys_and_shapes(c, k).items():
        t = torch.randn(shape, generator=g)
        if name.endswith("weight") and len(shape) == 1:
            t = 1 + 0.2 * t
        elif len(shape) == 4:
            t = t / (shape[1] * shape[2] * shape[3]) ** 0.5
        elif name == "rope.freqs":
            t = 3 * t
        elif len(shape) == 2:
            t = t / shape[1] ** 0.5
        else:
            t = 0.1 * t
        sd[name] = t
    return sd


def authors_forward(sd: dict, image: torch.Tensor, feats: torch.Tensor, output_size) -> torch.Tensor:
    """The release's ``JAFAR.forward`` transcribed from the spec onto its state dict: functional ops,
    their ``create_coordinate`` + ``coords @ freqs`` RoPE, ``nn.MultiheadAttention``'s own function
    with ``need_weights`` and head-averaged weights applied to the raw features."""

    def resblock(x, p):
        y = F.conv2d(F.silu(F.group_norm(x, 8, sd[p + "norm1.weight"], sd[p + "norm1.bias"])), sd[p + "conv1.weight"])
        y = F.conv2d(F.silu(F.group_norm(y, 8, sd[p + "norm2.weight"], sd[p + "norm2.bias"])), sd[p + "conv2.weight"])
        return y + x

    def encode(x, p):
        w = sd[p + "0.weight"]
        pad = w.shape[-1] // 2
        x = F.conv2d(F.pad(x, [pad] * 4, mode="reflect") if pad else x, w)
        return resblock(resblock(x, p + "1."), p + "2.")

    e = encode(image, "image_encoder.")
    b, d, hh, ww = e.shape
    xx, yy = torch.meshgrid(torch.linspace(0, 1, hh), torch.linspace(0, 1, ww), indexing="ij")
    coords = torch.stack([xx, yy], dim=-1).reshape(1, hh * ww, 2)
    tok = e.flatten(2).transpose(1, 2)
    angle = coords @ sd["rope.freqs"]
    x1, x2 = tok.chunk(2, dim=-1)
    tok = tok * angle.cos() + torch.cat((-x2, x1), dim=-1) * angle.sin()
    e = tok.transpose(1, 2).reshape(b, d, hh, ww)
    q = F.group_norm(F.adaptive_avg_pool2d(encode(e, "query_encoder."), output_size), 8)
    k = F.adaptive_avg_pool2d(encode(e, "key_encoder."), feats.shape[-2:])
    kf = encode(F.normalize(feats, dim=1), "key_features_encoder.")
    k = F.conv2d(kf, sd["sft_key.gamma.weight"]) * F.group_norm(k, 8) + F.conv2d(kf, sd["sft_key.beta.weight"])
    q = F.conv2d(q, sd["cross_decode.conv2d.weight"], padding=1)
    q, k, v = (t.flatten(2).transpose(1, 2) for t in (q, k, feats))
    a = "cross_decode.cross_attn."
    q = F.rms_norm(q, (128,), sd[a + "norm_q.weight"])
    k = F.rms_norm(k, (128,), sd[a + "norm_k.weight"])
    vn = F.rms_norm(v, (v.shape[-1],), sd[a + "norm_v.weight"])
    m = a + "attention."
    _, weights = F.multi_head_attention_forward(
        q.transpose(0, 1), k.transpose(0, 1), vn.transpose(0, 1), 128, 4, None, sd[m + "in_proj_bias"], None, None,
        False, 0.0, sd[m + "out_proj.weight"], sd[m + "out_proj.bias"], training=False, need_weights=True,
        use_separate_proj_weight=True, q_proj_weight=sd[m + "q_proj_weight"], k_proj_weight=sd[m + "k_proj_weight"],
        v_proj_weight=sd[m + "v_proj_weight"], average_attn_weights=True)
    out = torch.einsum("bij,bjd->bid", weights, v)
    return out.transpose(1, 2).reshape(b, -1, *output_size)


def loaded_core(sd: dict, c: int = C, **kw) -> JafarCore:
    core = JafarCore(c, **kw).eval()
    core.load_state_dict(checkpoint_filter_fn(sd, core))
    return core


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("image_hw, grid, out_hw", [((64, 96), (4, 6), (16, 24)), ((40, 56), (5, 7), (37, 53))])
def test_equals_the_authors_computation(photo, image_hw, grid, out_hw):
    """4x on the photo's grid, and a non-integer 37x53 from a 5x7 grid: <= 1e-5 relative."""
    sd = seeded_release()
    image = F.interpolate(photo, size=image_hw, mode="bilinear", align_corners=False)
    feats = torch.randn(1, C, *grid, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = loaded_core(sd)(image, feats, out_hw)
        ref = authors_forward(sd, image, feats, out_hw)
    assert out.shape == ref.shape == (1, C, *out_hw)
    assert rel_err(out, ref) <= 1e-5
    # a convex combination of the raw features: inside their range per channel
    assert (out.amax(dim=(2, 3)) <= feats.amax(dim=(2, 3)) + 1e-5).all()


def test_dead_value_path_does_not_matter_and_is_not_built():
    """The release's value path (norm_v, v_proj, v bias, out_proj) never reaches the output: changing
    it changes nothing, and the module holds 66,176 fewer parameters at C=384 than the release."""
    sd, other = seeded_release(), seeded_release()
    for k in other:
        if "norm_v" in k or "v_proj" in k or "out_proj" in k:
            other[k] = torch.randn_like(other[k])
    other["cross_decode.cross_attn.attention.in_proj_bias"][256:] = 5.0
    image, feats = torch.randn(1, 3, 32, 32), torch.randn(1, C, 2, 2)
    with torch.no_grad():
        assert torch.equal(authors_forward(sd, image, feats, (8, 8)), authors_forward(other, image, feats, (8, 8)))
        assert torch.equal(loaded_core(sd)(image, feats, (8, 8)), loaded_core(other)(image, feats, (8, 8)))


def test_parameter_counts():
    """Release (spec): 628,480 at C=384 (727,168 at 768); ours drops the 66,176 dead ones."""
    for c, release in ((384, 628_480), (768, 727_168)):
        assert sum(torch.Size(s).numel() for s in released_keys_and_shapes(c).values()) == release
        assert len(released_keys_and_shapes(c)) == 65
        with torch.device("meta"):
            core = JafarCore(c)
        assert sum(p.numel() for p in core.parameters()) == release - (c + 128 * c + 128 + 128 * 128 + 128)


def test_chunked_attention_equals_one_chunk():
    sd = seeded_release()
    image, feats = torch.randn(2, 3, 48, 40), torch.randn(2, C, 3, 5)
    with torch.no_grad():
        whole = loaded_core(sd, query_chunk=10**9)(image, feats, (29, 31))
        chunked = loaded_core(sd, query_chunk=7)(image, feats, (29, 31))
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image_hw, grid, out_hw, kernel_size, rows", [
    ((45, 38), (3, 5), (29, 31), 1, 1), ((45, 38), (3, 5), (29, 31), 3, 2), ((37, 22), (3, 2), (37, 22), 3, 1)])
def test_banded_full_resolution_maps_equal_the_whole_computation(image_hw, grid, out_hw, kernel_size, rows):
    """Image-size encoders and the output-size query path in bands of 1-2 rows (odd sizes, a non-integer
    output, the reflect halo of a 3x3 first convolution, an output at the image's size, whose pooling is
    skipped): the whole computation's numbers (GroupNorm statistics in float64: <= 1e-6 relative)."""
    sd = seeded_release(k=kernel_size)
    image, feats = torch.randn(2, 3, *image_hw), torch.randn(2, C, *grid)
    whole = loaded_core(sd, kernel_size=kernel_size)
    banded = loaded_core(sd, kernel_size=kernel_size)
    banded.stream_bytes = 8 * 2 * 128 * image_hw[1] * 4 * rows  # `rows` rows per band of the image-size maps
    with torch.no_grad():
        assert banded.band_rows(2, *image_hw, 4) == rows and whole.band_rows(2, *image_hw, 4) is None
        assert banded.band_rows(2, *out_hw, 4) is not None  # the output-size queries go in bands too
        ref, out = whole(image, feats, out_hw), banded(image, feats, out_hw)
    assert out.shape == ref.shape == (2, C, *out_hw)
    assert rel_err(out, ref) <= 1e-6
    # under autograd (training) the maps are computed whole: the same numbers as whole, with gradients
    image.requires_grad_(True)
    trained = banded(image, feats, out_hw)
    assert torch.equal(trained.detach(), whole(image, feats, out_hw).detach())
    trained.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_runs_where_the_input_is():
    """The release builds its coordinates on CUDA; ours are made on the input's device."""
    core = loaded_core(seeded_release())
    out = core(torch.randn(1, 3, 16, 16), torch.randn(1, C, 2, 2), (5, 5))
    assert out.device.type == "cpu" and torch.isfinite(out).all()
    if torch.cuda.is_available():
        gpu = core.cuda()(torch.randn(1, 3, 16, 16, device="cuda"), torch.randn(1, C, 2, 2, device="cuda"), (5, 5))
        assert gpu.device.type == "cuda"


def test_release_layout_round_trip_and_refusals():
    sd = seeded_release()
    core = loaded_core(sd)
    back = release_state_dict(core)
    assert set(back) == set(sd)
    kept = {k for k in sd if "norm_v" not in k and "v_proj" not in k and "out_proj" not in k}
    assert all(torch.equal(back[k], sd[k]) for k in kept - {"cross_decode.cross_attn.attention.in_proj_bias"})
    with pytest.raises(WeightFileError, match="'decoder.extra.weight'"):
        checkpoint_filter_fn({**sd, "decoder.extra.weight": torch.zeros(1)}, JafarCore(C))
    bad = dict(sd)
    bad["cross_decode.cross_attn.norm_v.weight"] = torch.ones(768)  # a file made for C=768
    with pytest.raises(WeightFileError, match="norm_v.weight"):
        checkpoint_filter_fn(bad, JafarCore(C))
    missing = {k: v for k, v in sd.items() if k != "cross_decode.cross_attn.attention.in_proj_bias"}
    with pytest.raises(WeightFileError, match="in_proj_bias"):
        checkpoint_filter_fn(missing, JafarCore(C))


def test_registered_upsampler_loads_the_authors_file(tmp_path, tiny_backbone, photo):
    """Their training checkpoint ({'jafar', 'optimizer_jafar', 'epoch', 'cfg'} with a hydra config)
    is read without building the config, converted, and computes the authors' output; a wrong key
    or shape is refused naming it."""
    from omegaconf import OmegaConf

    from brixel_plugins.featurizer import backbone_layers
    from brixel_plugins.files.upsampler_file import convert_release, load_upsampler

    assert "jafar" in list_upsamplers()
    spec = tiny_backbone.spec
    sd = seeded_release(spec.embed_dim)
    src = tmp_path / "vit_small_patch14_dinov2.lvd142m.pth"
    cfg = OmegaConf.create({"model": {"name": "jafar", "v_dim": spec.embed_dim}, "img_size": 448})
    torch.save({"jafar": sd, "optimizer_jafar": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
                "epoch": 0, "cfg": cfg}, src)
    read = read_release_file(src)
    assert set(read["jafar"]) == set(sd) and read["epoch"] == 0
    dst = convert_release(src, tmp_path / "jafar.safetensors", "jafar", spec, factor=4)
    up = load_upsampler(dst, spec).eval()
    assert isinstance(up, JAFAR) and up.factor == 4
    layers = backbone_layers(tiny_backbone, photo, [up])
    with torch.no_grad():
        out = up(photo, layers)
        ref = authors_forward(sd, photo, layers[spec.depth - 1], (16, 24))
    assert out.shape == (1, spec.embed_dim, 16, 24) and rel_err(out, ref) <= 1e-5

    torch.save({"jafar": {**sd, "head.weight": torch.zeros(2)}}, tmp_path / "extra.pth")
    with pytest.raises(WeightFileError, match="'head.weight'"):
        convert_release(tmp_path / "extra.pth", tmp_path / "x.safetensors", "jafar", spec)
    wrong = dict(sd, **{"key_features_encoder.0.weight": torch.zeros(128, 384, 1, 1)})
    torch.save({"jafar": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(WeightFileError, match="key_features_encoder.0.weight"):
        convert_release(tmp_path / "wrong.pth", tmp_path / "x.safetensors", "jafar", spec)
    assert not (tmp_path / "x.safetensors").exists()


def test_zero_start_and_factor(tiny_backbone, photo):
    spec = tiny_backbone.spec
    up = build_upsampler(dict(type="jafar", factor=3), spec).eval()
    assert up.config == {"factor": 3, "kernel_size": 1, "num_heads": 4, "zero_start": False}
    layers = tiny_backbone.layers(photo, up.layer_indices)
    assert up(photo, layers).shape == (1, spec.embed_dim, 12, 18)
    with pytest.raises(WeightFileError, match="zero_start"):
        build_upsampler(dict(type="jafar", zero_start=True), spec).load_release_state_dict(seeded_release(64))


def test_parameter_count_of_the_registered_upsampler():
    with torch.device("meta"):
        up = JAFAR(BackboneSpec("vits16", 384, 12, 6))
    assert sum(p.numel() for p in up.parameters()) == 628_480 - 66_176


class _Payload:
    """What a hostile file could hold: an object whose unpickling runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_reading_an_authors_file_builds_nothing_but_tensors_and_plain_data(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"jafar": seeded_release(), "cfg": _Payload(marker), "epoch": 2}, tmp_path / "hostile.pth")
    read = read_release_file(tmp_path / "hostile.pth")
    assert not marker.exists()  # os.system was never called
    assert read["epoch"] == 2 and set(read["jafar"]) == set(seeded_release())
    assert type(read["cfg"]).__module__ == "brixel_plugins.upsamplers.release_files"  # an inert stand-in


def test_any_output_size_through_the_interface(tiny_backbone, photo):
    """``output_size`` (the upsampler interface, DenseFeaturizer's output_scale) gives JAFAR's output
    at that size, the core's computation on the same inputs; the zero start is bilinear at any size."""
    from brixel_plugins.featurizer import DenseFeaturizer

    spec = tiny_backbone.spec
    torch.manual_seed(0)
    up = build_upsampler(dict(type="jafar"), spec).eval()
    assert up.any_output_size
    layers = tiny_backbone.layers(photo, up.layer_indices)
    last = layers[spec.depth - 1]
    image_hr = F.interpolate(photo, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = up(photo, layers, image_hr=image_hr, output_size=(37, 53))
        assert torch.equal(out, up.core(image_hr, last, (37, 53)))
        assert DenseFeaturizer(tiny_backbone, up).features(photo, output_scale=2.5)[0].shape[-2:] == (10, 15)
        zero = build_upsampler(dict(type="jafar", zero_start=True), spec).eval()
        torch.testing.assert_close(zero(photo, layers, output_size=(37, 53)),
                                   F.interpolate(last, size=(37, 53), mode="bilinear", align_corners=False),
                                   rtol=0, atol=1e-5)
