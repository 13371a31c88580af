"""LoftUp: equal to the authors' computation on their hub key layout (with the batch-wide colour
scaling), a picture's output independent of its batch by default, released files load (and only
they), registered and usable like every upsampler."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones import BackboneSpec, WeightFileError
from brixel_plugins.upsamplers import build_upsampler, list_upsamplers
from brixel_plugins.upsamplers.loftup import LoftUp, LoftUpCore, checkpoint_filter_fn, release_state_dict

C = 64  # feature dim of the tests (the tiny backbone's); E = C + 20 = 84, 4 heads of 21


def released_keys_and_shapes(c: int, n_freqs: int = 20, layers: int = 2) -> dict:
    """The 54 tensors of the hub's ``UpsamplerwithChannelNorm(LoftUp(c), ChannelNorm(c))``."""
    e, start = c + 20, 10 * n_freqs + 3
    u = "upsampler."
    shapes = {"channelnorm.norm.weight": (c,), "channelnorm.norm.bias": (c,),
              u + "lr_pe.biases": (2, 2, 5), u + "fourier_feat.1.biases": (2, 5, n_freqs),
              u + "first_conv.0.norm.weight": (start,), u + "first_conv.0.norm.bias": (start,),
              u + "first_conv.1.weight": (e, start, 3, 3), u + "first_conv.1.bias": (e,),
              u + "first_conv.4.weight": (e, e, 3, 3), u + "first_conv.4.bias": (e,),
              u + "final_conv.0.weight": (c, e, 1, 1), u + "final_conv.0.bias": (c,),
              u + "final_conv.1.weight": (c,), u + "final_conv.1.bias": (c,),
              u + "ca_transformer.norm.weight": (e,), u + "ca_transformer.norm.bias": (e,)}
    for i in (2, 5):
        shapes.update({f"{u}first_conv.{i}.{n}": (e,) for n in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{u}first_conv.{i}.num_batches_tracked"] = ()
    for i in range(layers):
        p = f"{u}ca_transformer.layers.{i}."
        shapes.update({p + "0.norm_q.weight": (e,), p + "0.norm_q.bias": (e,), p + "0.norm_kv.weight": (e,),
                       p + "0.norm_kv.bias": (e,), p + "0.attention.in_proj_weight": (3 * e, e),
                       p + "0.attention.in_proj_bias": (3 * e,), p + "0.attention.out_proj.weight": (e, e),
                       p + "0.attention.out_proj.bias": (e,), p + "1.net.0.weight": (e,), p + "1.net.0.bias": (e,),
                       p + "1.net.1.weight": (c, e), p + "1.net.1.bias": (c,), p + "1.net.4.weight": (e, c),
                       p + "1.net.4.bias": (e,)})
    return shapes


def seeded_release(c: int = C, seed: int = 0) -> dict:
    """Non-trivial weights in the hub layout: every tensor random (norm scales around 1, BatchNorm
    statistics random, zero-initialised biases random too)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in released_keys_and_shapes(c).items():
        t = torch.randn(shape, generator=g)
        if name.endswith("num_batches_tracked"):
            t = torch.tensor(7)
        elif name.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("weight") and len(shape) == 1:
            t = 1 + 0.2 * t
        elif len(shape) in (2, 4) and "biases" not in name:
            t = t / torch.Size(shape[1:]).numel() ** 0.5
        elif "biases" not in name:
            t = 0.1 * t
        sd[name] = t
    return sd


def authors_forward(sd: dict, feats: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """The hub model's ``forward(lr_feats, img)`` transcribed from the spec onto its state dict
    (their argument order, their batch-wide MinMaxScaler, ``nn.MultiheadAttention``'s own function)."""
    u = "upsampler."
    c = feats.shape[1]
    feats = F.layer_norm(feats.permute(0, 2, 3, 1), (c,), sd["channelnorm.norm.weight"],
                         sd["channelnorm.norm.bias"]).permute(0, 3, 1, 2)
    flat = img.permute(1, 0, 2, 3).reshape(3, -1)
    lo = flat.min(dim=-1).values.reshape(1, 3, 1, 1)
    scale = flat.max(dim=-1).values.reshape(1, 3, 1, 1) - lo
    x = (img - lo) / scale.clamp_min(0.0001) - 0.5

    def implicit(inp, biases, n, colour):
        b, _, h, w = inp.shape
        g = torch.cat([t.unsqueeze(0) for t in torch.meshgrid([torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)],
                                                              indexing="ij")]).unsqueeze(0)
        g = torch.broadcast_to(g, (b, 2, h, w))
        base = torch.cat([g, inp], dim=1) if colour else g
        m = base.shape[1]
        f = base.unsqueeze(1) * torch.exp(torch.linspace(-2, 10, n)).reshape(1, n, 1, 1, 1)
        s = (f + biases[0].reshape(1, n, m, 1, 1)).reshape(b, n * m, h, w)
        co = (f + biases[1].reshape(1, n, m, 1, 1)).reshape(b, n * m, h, w)
        return torch.cat([torch.sin(s), torch.cos(co)] + ([inp] if colour else []), dim=1)

    x = implicit(x, sd[u + "fourier_feat.1.biases"], 20, True)
    fc = u + "first_conv."
    x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), sd[fc + "0.norm.weight"],
                     sd[fc + "0.norm.bias"]).permute(0, 3, 1, 2)
    for conv, bn in ((1, 2), (4, 5)):
        x = F.conv2d(x, sd[f"{fc}{conv}.weight"], sd[f"{fc}{conv}.bias"], padding=1)
        x = F.relu(F.batch_norm(x, sd[f"{fc}{bn}.running_mean"], sd[f"{fc}{bn}.running_var"], sd[f"{fc}{bn}.weight"],
                                sd[f"{fc}{bn}.bias"], training=False, eps=1e-5))
    b, e, h, w = x.shape
    q = x.flatten(2).permute(0, 2, 1)
    kv = torch.cat([feats, implicit(feats, sd[u + "lr_pe.biases"], 5, False)], dim=1).flatten(2).permute(0, 2, 1)
    i = 0
    while f"{u}ca_transformer.layers.{i}.0.norm_q.weight" in sd:
        p = f"{u}ca_transformer.layers.{i}."
        qn = F.layer_norm(q, (e,), sd[p + "0.norm_q.weight"], sd[p + "0.norm_q.bias"])
        kvn = F.layer_norm(kv, (e,), sd[p + "0.norm_kv.weight"], sd[p + "0.norm_kv.bias"])
        att, _ = F.multi_head_attention_forward(
            qn.permute(1, 0, 2), kvn.permute(1, 0, 2), kvn.permute(1, 0, 2), e, 4, sd[p + "0.attention.in_proj_weight"],
            sd[p + "0.attention.in_proj_bias"], None, None, False, 0.0, sd[p + "0.attention.out_proj.weight"],
            sd[p + "0.attention.out_proj.bias"], training=False, need_weights=False)
        q = att.permute(1, 0, 2) + q
        y = F.layer_norm(q, (e,), sd[p + "1.net.0.weight"], sd[p + "1.net.0.bias"])
        y = F.linear(F.gelu(F.linear(y, sd[p + "1.net.1.weight"], sd[p + "1.net.1.bias"])),
                     sd[p + "1.net.4.weight"], sd[p + "1.net.4.bias"])
        q = y + q
        i += 1
    q = F.layer_norm(q, (e,), sd[u + "ca_transformer.norm.weight"], sd[u + "ca_transformer.norm.bias"])
    x = F.conv2d(q.permute(0, 2, 1).reshape(b, e, h, w), sd[u + "final_conv.0.weight"], sd[u + "final_conv.0.bias"])
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    x = (x - mu) / torch.sqrt(var + 1e-6)
    return sd[u + "final_conv.1.weight"][:, None, None] * x + sd[u + "final_conv.1.bias"][:, None, None]


def loaded_core(sd: dict, c: int = C, **kw) -> LoftUpCore:
    core = LoftUpCore(c, **kw).eval()
    core.load_state_dict(checkpoint_filter_fn(sd, core))
    return core


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture
def small(photo):
    """The photo at 32x48 (LoftUp's convolutions run at the output's full resolution)."""
    return F.interpolate(photo, size=(32, 48), mode="bilinear", align_corners=False)


def test_equals_the_authors_computation(small):
    """A batch of two pictures at the image size (4x6 tokens -> 32x48), the release's batch-wide
    scaling: <= 1e-3 relative (the e^10 Fourier frequencies amplify rounding)."""
    sd = seeded_release()
    image = torch.cat([small, small.flip(-1) * 0.5])
    feats = torch.randn(2, C, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = loaded_core(sd, batch_statistics="batch")(image, feats)
        ref = authors_forward(sd, feats, image)
    assert out.shape == ref.shape == (2, C, 32, 48)
    assert rel_err(out, ref) <= 1e-3


def test_non_integer_output_size_resizes_the_guidance(photo):
    """37x53 from a 5x7 grid: the authors' recipe, the image bilinearly resized to the output size."""
    sd = seeded_release(seed=3)
    feats = torch.randn(1, C, 5, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = loaded_core(sd, query_chunk=500)(photo, feats, (37, 53))
        ref = authors_forward(sd, feats, F.interpolate(photo, size=(37, 53), mode="bilinear", align_corners=False))
    assert out.shape == (1, C, 37, 53)
    assert rel_err(out, ref) <= 1e-3


def test_a_pictures_output_does_not_depend_on_its_batch_by_default(small):
    """Default 'image': the picture alone == the picture in a batch. 'batch' (the release): it changes."""
    sd = seeded_release()
    other = small.flip(-1) * 3  # a picture with a wider colour range
    feats = torch.randn(2, C, 4, 6, generator=torch.Generator().manual_seed(1))
    batch = torch.cat([small, other])
    with torch.no_grad():
        per_image = loaded_core(sd)
        alone, together = per_image(small, feats[:1]), per_image(batch, feats)[:1]
        assert torch.allclose(alone, together, rtol=0, atol=1e-4), float((alone - together).abs().max())
        released = loaded_core(sd, batch_statistics="batch")
        alone, together = released(small, feats[:1]), released(batch, feats)[:1]
        assert float((alone - together).abs().max()) > 0.1


def test_chunked_attention_equals_one_chunk(small):
    sd = seeded_release()
    feats = torch.randn(1, C, 4, 6)
    with torch.no_grad():
        whole = loaded_core(sd, query_chunk=10**9)(small, feats)
        chunked = loaded_core(sd, query_chunk=333)(small, feats)
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-5)


def test_parameter_counts():
    """The hub's loftup_dinov2s: 4,303,894 parameters (C=384), 54 keys; C=768: 15,051,286."""
    for c, expected in ((384, 4_303_894), (512, 7_165_462), (768, 15_051_286)):
        with torch.device("meta"):
            core = LoftUpCore(c)
        assert sum(p.numel() for p in core.parameters()) == expected
        assert len(released_keys_and_shapes(c)) == 54
        assert {k: tuple(v.shape) for k, v in release_state_dict(core).items()} == released_keys_and_shapes(c)


def test_release_layouts_and_refusals():
    sd = seeded_release()
    core = loaded_core(sd)
    assert all(torch.equal(v, sd[k]) for k, v in release_state_dict(core).items())
    # a Lightning training checkpoint's state dict: ChannelNorm as model.1.norm.*, the backbone as model.0.*
    lightning = {("model.1." + k[len("channelnorm."):] if k.startswith("channelnorm.") else k): v
                 for k, v in sd.items()}
    lightning.update({"model.0.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "downsampler.w.weight": torch.zeros(1),
                      "scale_net.net.weight": torch.zeros(1)})
    assert checkpoint_filter_fn(lightning, core).keys() == core.state_dict().keys()
    with pytest.raises(WeightFileError, match="'upsampler.refiner.weight'"):
        checkpoint_filter_fn({**sd, "upsampler.refiner.weight": torch.zeros(1)}, core)
    # push_to_hf's file (the upsampler alone, keys without 'upsampler.'): refused, naming a key
    with pytest.raises(WeightFileError, match="without its ChannelNorm"):
        checkpoint_filter_fn({k[len("upsampler."):]: v for k, v in sd.items() if k.startswith("upsampler.")}, core)


def test_registered_upsampler_loads_the_hub_file(tmp_path, tiny_backbone, photo):
    from brixel_plugins.featurizer import backbone_layers
    from brixel_plugins.files.upsampler_file import convert_release, load_upsampler

    assert "loftup" in list_upsamplers()
    spec = tiny_backbone.spec
    sd = seeded_release(spec.embed_dim)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    dst = convert_release(tmp_path / "pytorch_model.bin", tmp_path / "loftup.safetensors", "loftup", spec, factor=8)
    up = load_upsampler(dst, spec).eval()
    assert isinstance(up, LoftUp) and up.config["batch_statistics"] == "image"
    layers = backbone_layers(tiny_backbone, photo, [up])
    with torch.no_grad():
        out = up(photo, layers)
        guidance = F.interpolate(photo, size=(32, 48), mode="bilinear", align_corners=False)
        ref = authors_forward(sd, layers[spec.depth - 1], guidance)
    assert out.shape == (1, spec.embed_dim, 32, 48) and rel_err(out, ref) <= 1e-3

    # a Lightning checkpoint with its hydra config in the hyper-parameters: the state dict is read
    from omegaconf import OmegaConf

    torch.save({"state_dict": {("model.1." + k[len("channelnorm."):] if k.startswith("channelnorm.") else k): v
                               for k, v in sd.items()},
                "hyper_parameters": {"cfg": OmegaConf.create({"dim": spec.embed_dim})}, "epoch": 0},
               tmp_path / "last.ckpt")
    lightning = load_upsampler(convert_release(tmp_path / "last.ckpt", tmp_path / "l.safetensors", "loftup", spec,
                                               factor=8), spec).eval()
    with torch.no_grad():
        assert torch.equal(lightning(photo, layers), out)

    wrong = dict(sd, **{"upsampler.final_conv.0.weight": torch.zeros(384, 84, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.bin")
    with pytest.raises(WeightFileError, match="final_conv.0.weight"):
        convert_release(tmp_path / "wrong.bin", tmp_path / "x.safetensors", "loftup", spec)
    assert not (tmp_path / "x.safetensors").exists()


def test_factor_guidance_and_config(tiny_backbone, photo):
    spec = tiny_backbone.spec
    up = build_upsampler(dict(type="loftup", factor=4), spec).eval()
    assert up.config == {"factor": 4, "n_freqs": 20, "num_heads": 4, "num_layers": 2, "batch_statistics": "image",
                         "zero_start": False}
    layers = tiny_backbone.layers(photo, up.layer_indices)
    image_hr = F.interpolate(photo, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        out = up(photo, layers, image_hr=image_hr)
        ref = up.core(F.interpolate(image_hr, size=(16, 24), mode="bilinear", align_corners=False),
                      layers[spec.depth - 1])
    assert out.shape == (1, spec.embed_dim, 16, 24) and torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="batch_statistics"):
        build_upsampler(dict(type="loftup", batch_statistics="dataset"), spec)


def test_parameter_count_of_the_registered_upsampler():
    with torch.device("meta"):
        up = LoftUp(BackboneSpec("vits16", 384, 12, 6))
    assert sum(p.numel() for p in up.parameters()) == 4_303_894


def test_any_output_size_through_the_interface(tiny_backbone, photo):
    """``output_size`` resizes the guidance to it (the authors' recipe), through the upsampler
    interface and DenseFeaturizer; the zero start is bilinear at any size."""
    from brixel_plugins.featurizer import DenseFeaturizer

    spec = tiny_backbone.spec
    torch.manual_seed(0)
    up = build_upsampler(dict(type="loftup"), spec).eval()
    assert up.any_output_size
    layers = tiny_backbone.layers(photo, up.layer_indices)
    last = layers[spec.depth - 1]
    with torch.no_grad():
        out = up(photo, layers, output_size=(37, 53))
        guidance = F.interpolate(photo, size=(37, 53), mode="bilinear", align_corners=False)
        assert torch.equal(out, up.core(guidance, last))
        assert DenseFeaturizer(tiny_backbone, up).features(photo, output_scale=2.5)[0].shape[-2:] == (10, 15)
        zero = build_upsampler(dict(type="loftup", zero_start=True), spec).eval()
        torch.testing.assert_close(zero(photo, layers, output_size=(37, 53)),
                                   F.interpolate(last, size=(37, 53), mode="bilinear", align_corners=False),
                                   rtol=0, atol=1e-5)
