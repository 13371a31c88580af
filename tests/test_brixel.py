"""BRIXEL upsampler: shapes, released key layout and parameter counts, weight files, gradients."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones import BackboneSpec, WeightFileError
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.files.upsampler_file import convert_release, load_upsampler, save_upsampler
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.brixel import Brixel, release_only_shapes
from brixel_plugins.upsamplers.brixel_lean import BrixelLean
from brixel_plugins.upsamplers.layers.deform_attn import reference_points
from brixel_plugins.upsamplers.layers.taps import default_taps

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
SPECS = {
    "vits16": BackboneSpec("vits16", 384, 12, 6),
    "vitb16": BackboneSpec("vitb16", 768, 12, 12),
    "vitl16": BackboneSpec("vitl16", 1024, 24, 16),
    "vith16plus": BackboneSpec("vith16plus", 1280, 32, 20),
}
# the authors' quoted adapter sizes, which count the modules they build but never run
RELEASE_ADAPTER_PARAMS = {"vits16": 3.87e6, "vitb16": 10.8e6, "vitl16": 17.8e6, "vith16plus": 26.5e6}


def make_model(spec, seed=0, **kw) -> Brixel:
    torch.manual_seed(seed)
    model = Brixel(spec, **kw)
    # a trained-looking model: no zero-initialised parameter may hide a wiring mistake
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model(tiny_spec):
    return make_model(tiny_spec)


@pytest.fixture(scope="module")
def featurizer(tiny_backbone, model):
    return DenseFeaturizer(tiny_backbone, model).eval()


# -- construction ----------------------------------------------------------------------------
def test_registered_and_declares_needs(tiny_spec):
    up = build_upsampler(dict(type="brixel"), tiny_spec)
    assert isinstance(up, Brixel) and up.method == "brixel"
    assert up.factor == 4 and up.needs_image and not up.calls_backbone
    assert up.layer_indices == (0, 1, 2, 3)  # depth 4: evenly spaced, ending at the last layer
    with pytest.raises(ValueError, match="exactly 4"):
        build_upsampler(dict(type="brixel", factor=2), tiny_spec)
    with pytest.raises(ValueError, match="divisible by 32"):
        Brixel(BackboneSpec("vits16", 48, 4, 2))


def test_default_taps():
    assert default_taps(SPECS["vits16"]) == (3, 6, 9, 11)
    assert default_taps(BackboneSpec("vits16plus", 384, 12, 6)) == (3, 6, 9, 11)
    assert default_taps(SPECS["vitb16"]) == (3, 6, 9, 11)
    assert default_taps(SPECS["vitl16"]) == (6, 12, 18, 23)
    assert default_taps(SPECS["vith16plus"]) == (8, 16, 24, 31)
    assert default_taps(BackboneSpec("vit7b16", 4096, 40, 32)) == (9, 19, 29, 39)
    assert default_taps(BackboneSpec("vitl16", 64, 8, 2)) == (1, 3, 5, 7)  # non-standard depth


@pytest.mark.parametrize("arch", list(SPECS))
def test_parameter_counts(arch):
    with torch.device("meta"):
        m = Brixel(SPECS[arch])
    adapter = sum(p.numel() for p in m.adapter.parameters())
    head = sum(p.numel() for p in m.head.parameters())
    d = SPECS[arch].embed_dim
    assert adapter == 9 * d * d + 1416.5 * d + 150_976  # the modules that reach the output
    # + the release's unused modules (their parameters, not BN statistics; 2 more level_embed rows)
    unused = sum(math.prod(s) for k, s in release_only_shapes(d).items() if not k.endswith(BN_STATS)) + 2 * d
    assert abs((adapter + unused) / RELEASE_ADAPTER_PARAMS[arch] - 1) < 0.01, (arch, adapter + unused)
    assert head == 129 * d + 36736  # width-64 head: 1x1 in/out convs + a D-independent trunk
    if arch == "vits16":
        assert round(head / 1e6, 2) == 0.09
    if arch == "vith16plus":
        assert round(head / 1e6, 1) == 0.2


def released_prefixes(n_interactions=4):
    """Module prefixes of the released checkpoints that reach the output (the authors' layout)."""
    ext = ["query_norm", "feat_norm", "attn.sampling_offsets", "attn.attention_weights",
           "attn.value_proj", "attn.output_proj", "ffn.fc1", "ffn.dwconv.dwconv", "ffn.fc2", "ffn_norm"]
    out = ["adapter.level_embed", "adapter.norm1"]
    out += [f"adapter.spm.{n}" for n in ("stem", "conv2", "fc1", "fc2")]
    for i in range(n_interactions):
        out += [f"adapter.interactions.{i}.extractor.{e}" for e in ext]
    out += [f"adapter.interactions.{n_interactions - 1}.extra_extractors.{j}.{e}" for j in (0, 1) for e in ext]
    out += ["head.align_in", "head.mix", "head.head_norm.ln", "head.out_conv"]
    out += [f"head.trunk.{i}.block.{j}" for i in range(3) for j in ("0.ln", "1", "3", "5")]
    return out


def test_state_dict_keys_follow_released_layout():
    with torch.device("meta"):
        m = Brixel(SPECS["vits16"])
    sd = m.state_dict()
    prefixes = released_prefixes()
    stray = [k for k in sd if not any(k == p or k.startswith(p + ".") for p in prefixes)]
    assert stray == []
    empty = [p for p in prefixes if not any(k == p or k.startswith(p + ".") for k in sd)]
    assert empty == []
    assert not any(k.startswith(("adapter.backbone", "backbone")) for k in sd)
    assert not set(sd) & set(release_only_shapes(384))
    # a few exact shapes that pin down the implicit modules (ViT-S, D=384)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["adapter.level_embed"] == (384,)  # the release's row for c2
    assert shapes["adapter.interactions.0.extractor.attn.sampling_offsets.weight"] == (16 * 4 * 2, 384)
    assert shapes["adapter.interactions.0.extractor.attn.value_proj.weight"] == (192, 384)
    assert shapes["adapter.interactions.0.extractor.ffn.dwconv.dwconv.weight"] == (96, 1, 3, 3)
    assert shapes["head.mix.weight"] == (64, 16, 3, 3)
    assert "adapter.spm.stem.1.num_batches_tracked" in shapes  # BN buffers travel with the weights
    assert sum(k.endswith("extractor.query_norm.weight")
               or ".extra_extractors." in k and k.endswith("query_norm.weight") for k in sd) == 6


# -- forward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch,hw", [(1, (64, 96)), (2, (48, 80)), (3, (16, 16)), (2, (32, 16))])
def test_output_shapes(featurizer, batch, hw):
    x = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        y = featurizer(x)
    assert y.shape == (batch, 64, hw[0] // 4, hw[1] // 4)
    assert torch.isfinite(y).all()
    assert featurizer.upsampler.output_size(hw) == tuple(y.shape[-2:])


def test_photo_forward_batch_consistent(featurizer, photo):
    with torch.no_grad():
        one = featurizer(photo)
        two = featurizer(torch.cat([photo, photo.flip(-1)]))
    torch.testing.assert_close(two[:1], one, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(two[1:], one)


def test_residual_base_quirk(tiny_backbone, tiny_spec, photo):
    """With the head's output conv zeroed, BRIXEL returns exactly its residual base: the last
    tapped layer shrunk to half the grid, then enlarged to 4x."""
    m = make_model(tiny_spec)
    with torch.no_grad():
        m.head.out_conv.weight.zero_()
        m.head.out_conv.bias.zero_()
        layers = tiny_backbone.layers(photo, m.layer_indices)
        y = m(photo, layers)
    last = layers[3]  # (1, 64, 4, 6)
    want = F.interpolate(F.interpolate(last, size=(2, 3), mode="bilinear", align_corners=False),
                         size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    direct = Brixel(tiny_spec, residual_base="direct").residual(last, (16, 24))
    torch.testing.assert_close(direct, F.interpolate(last, size=(16, 24), mode="bilinear", align_corners=False))
    assert not torch.allclose(direct, want)


def test_deterministic_in_eval_and_drop_path_in_train(tiny_backbone, tiny_spec, photo):
    m = make_model(tiny_spec)
    layers = tiny_backbone.layers(photo, m.layer_indices)
    with torch.no_grad():
        a, b = m(photo, layers), m(photo, layers)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    m.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = m(torch.cat([photo] * 4), {i: v.repeat(4, 1, 1, 1) for i, v in layers.items()})
    assert not torch.allclose(c, a.expand_as(c))  # drop-path 0.3 on 6 extractors x 4 samples


def test_bf16_autocast_forward(featurizer, photo):
    with torch.no_grad():
        ref = featurizer(photo)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = featurizer(photo)
    assert out.shape == ref.shape and torch.isfinite(out.float()).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_gradients_reach_upsampler_only(tiny_backbone, tiny_spec, photo):
    m = make_model(tiny_spec).train()
    f = DenseFeaturizer(tiny_backbone, m)
    f.train()
    loss = f(torch.cat([photo, photo.flip(-1)])).square().mean()
    loss.backward()
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    # no dead weight: every parameter reaches the output (DDP runs without find_unused_parameters)
    assert [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    m.zero_grad()


# -- weight files ------------------------------------------------------------------------------
def test_save_load_round_trip_and_refusal(tmp_path, tiny_backbone, tiny_spec, model, photo):
    path = save_upsampler(tmp_path / "brixel.safetensors", model, extra={"note": "test"})
    loaded = load_upsampler(path, tiny_spec, method="brixel").eval()
    assert isinstance(loaded, Brixel) and loaded.layer_indices == model.layer_indices
    layers = tiny_backbone.layers(photo, model.layer_indices)
    with torch.no_grad():
        torch.testing.assert_close(loaded(photo, layers), model(photo, layers), rtol=0, atol=0)
    other = dataclasses.replace(tiny_spec, embed_dim=96)
    with pytest.raises(WeightFileError, match="embed_dim=64"):
        load_upsampler(path, other)
    with pytest.raises(WeightFileError, match="'lift'"):
        load_upsampler(path, tiny_spec, method="lift")


def release_layout(model, seed=0):
    """Our state dict in the authors' layout: + the modules they build but never run (random
    values: they must not matter), 3 level_embed rows (ours is the first)."""
    gen = torch.Generator().manual_seed(seed)
    d = model.embed_dim
    sd = {k: torch.randn(s, generator=gen) for k, s in release_only_shapes(d).items()}
    sd.update(model.state_dict())
    sd["adapter.level_embed"] = torch.cat([sd["adapter.level_embed"][None], torch.randn(2, d, generator=gen)])
    return sd


def fake_release_file(path, model, extra_keys=True):
    sd = release_layout(model)
    if extra_keys:  # the release keeps the frozen backbone under adapter.backbone.*
        sd["adapter.backbone.blocks.0.attn.qkv.weight"] = torch.randn(3 * 64, 64)
        sd["adapter.backbone.norm.weight"] = torch.ones(64)
        sd["backbone.cls_token"] = torch.zeros(1, 1, 64)
    torch.save(sd, path)
    return path


def test_release_checkpoint_round_trip(tmp_path, tiny_backbone, tiny_spec, model, photo):
    src = fake_release_file(tmp_path / "brixel_release.pth", model)
    layers = tiny_backbone.layers(photo, model.layer_indices)
    with torch.no_grad():
        want = model(photo, layers)
    # in memory, strict; the unused modules' values do not matter
    for seed in (0, 1):
        fresh = Brixel(tiny_spec).load_release_state_dict(release_layout(model, seed)).eval()
        with torch.no_grad():
            torch.testing.assert_close(fresh(photo, layers), want, rtol=0, atol=0)
    # converted to our format, then loaded through the featurizer
    dst = convert_release(src, tmp_path / "brixel_tiny.safetensors", "brixel", tiny_spec)
    f = DenseFeaturizer.build(tiny_backbone, dst).eval()
    with torch.no_grad():
        torch.testing.assert_close(f(photo), want, rtol=0, atol=0)
    assert f.upsampler.file_metadata["converted_from"] == "brixel_release.pth"


def test_release_checkpoint_refusals(tmp_path, tiny_spec, model):
    wide = make_model(dataclasses.replace(tiny_spec, embed_dim=96))
    src = fake_release_file(tmp_path / "wide.pth", wide)
    with pytest.raises(WeightFileError, match="D=96"):
        convert_release(src, tmp_path / "out.safetensors", "brixel", tiny_spec)
    assert not (tmp_path / "out.safetensors").exists()
    sd = release_layout(model)
    sd.pop("adapter.guide_proj.0.bias")
    with pytest.raises(WeightFileError, match="guide_proj.0.bias missing"):
        Brixel(tiny_spec).load_release_state_dict(sd)
    with pytest.raises(WeightFileError, match="level_embed"):  # our own layout is not the release's
        Brixel(tiny_spec).load_release_state_dict({**release_layout(model), **model.state_dict()})
    with pytest.raises(WeightFileError, match="not a BRIXEL checkpoint"):
        Brixel(tiny_spec).load_release_state_dict({"head.mix.weight": torch.zeros(64, 16, 3, 3)})


# -- BRIXEL-lean -------------------------------------------------------------------------------
def make_lean(spec, seed=0, **kw) -> BrixelLean:
    torch.manual_seed(seed)
    model = BrixelLean(spec, **kw)
    with torch.no_grad():  # a trained-looking model (out_conv starts at zero with zero_start)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def lean_reference(m: BrixelLean, image, layers):
    """The lean data flow written plainly (NCHW maps, conv-style out_conv, then the enlarged base
    added): the fused channels-last forward must compute exactly this."""
    taps = [layers[i] for i in m.layer_indices]
    h, w = taps[-1].shape[-2:]
    s1 = m.stem(image)
    q = m.query_in(m.down(s1)).flatten(2).transpose(1, 2) + m.level_embed
    ref = reference_points([(2 * h, 2 * w)], image.device)
    feats = [proj(tap.flatten(2).transpose(1, 2)) for proj, tap in zip(m.tap_proj, taps)]
    k = m.taps_per_extractor  # each extractor reads k taps as the k levels of one deformable attention
    for i, extractor in enumerate(m.extractors):
        q = extractor(q, ref, torch.cat(feats[i * k:(i + 1) * k], 1), [(h, w)] * k, [(2 * h, 2 * w)])
    c2 = m.query_out(q).transpose(1, 2).reshape(q.shape[0], -1, 2 * h, 2 * w)
    x = m.fuse_norm(s1 + F.interpolate(c2, size=(4 * h, 4 * w), mode="bilinear", align_corners=False))
    detail = m.out_conv(m.head_norm(m.trunk(x)))
    return F.interpolate(taps[-1], size=(4 * h, 4 * w), mode="bilinear", align_corners=False) + detail


def test_lean_registered_shapes_and_plain_reference(tiny_backbone, tiny_spec):
    up = build_upsampler(dict(type="brixel_lean"), tiny_spec)
    assert isinstance(up, BrixelLean) and up.factor == 4 and up.needs_image
    assert up.layer_indices == Brixel(tiny_spec).layer_indices
    with pytest.raises(ValueError, match="exactly 4"):
        BrixelLean(tiny_spec, factor=2)
    with pytest.raises(ValueError, match="2 \\* n_heads"):
        BrixelLean(tiny_spec, query_dim=40)
    m = make_lean(tiny_spec)
    for batch, hw in [(2, (48, 80)), (1, (16, 16)), (1, (32, 16))]:
        x = torch.randn(batch, 3, *hw)
        layers = tiny_backbone.layers(x, m.layer_indices)
        with torch.no_grad():
            y = m(x, layers)
            torch.testing.assert_close(y, lean_reference(m, x, layers), rtol=1e-5, atol=1e-5)
        assert y.shape == (batch, 64, hw[0] // 4, hw[1] // 4)


def test_lean_zero_start_is_bilinear_and_bf16_runs(tiny_backbone, tiny_spec, photo):
    m = BrixelLean(tiny_spec, zero_start=True).eval()
    layers = tiny_backbone.layers(photo, m.layer_indices)
    with torch.no_grad():
        y = m(photo, layers)
        want = F.interpolate(layers[m.layer_indices[-1]], size=(16, 24), mode="bilinear", align_corners=False)
        torch.testing.assert_close(y, want, rtol=0, atol=1e-6)
        trained = make_lean(tiny_spec)
        ref = trained(photo, layers)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = trained(photo, layers)
    assert torch.isfinite(out.float()).all() and (out.float() - ref).norm() / ref.norm() < 0.05


def lean_parameter_count(d: int, q: int, w: int, blocks: int, extractors: int = 2, levels: int = 2,
                         heads: int = 8, points: int = 4) -> int:
    """BRIXEL-lean's parameters by hand, for embed dim d, query width q, head width w."""
    stem = 3 * 9 * (w // 2) + 2 * (w // 2) + (w // 2) * 9 * w + 2 * w + w * 9 * w + 2 * w  # 3 convs + BN
    down = w * 9 * 2 * w + 2 * 2 * w
    query_in = 2 * w * q + q
    tap_proj = 4 * (d * q + q)
    offsets, weights = heads * levels * points * 2, heads * levels * points
    attn = (q + 1) * offsets + (q + 1) * weights + (q * q // 2 + q // 2) + (q // 2 * q + q)  # + value, output proj
    hidden = q // 4
    ffn = q * hidden + hidden + 10 * hidden + hidden * q + q  # fc1, depthwise 3x3 (+ bias), fc2
    extractor = 3 * 2 * q + attn + ffn  # 3 LayerNorms
    convnext = 10 * w + 2 * w + (w * 2 * w + 2 * w) + (2 * w * w + w)  # dw 3x3, LN, MLP x2
    head = (q * w + w) + 2 * w + blocks * convnext + 2 * w + (w * d + d)  # query_out, 2 LN, out_conv
    return stem + down + query_in + q + tap_proj + extractors * extractor + head


@pytest.mark.parametrize("arch", list(SPECS))
def test_lean_parameter_counts(arch):
    """The defaults (queries D/3 rounded to 16, head width 96, 1 head block, 2 extractors of 2
    taps each) against a count by hand; ViT-S 704,304."""
    with torch.device("meta"):
        m = BrixelLean(SPECS[arch])
    d = SPECS[arch].embed_dim
    q = {384: 128, 768: 256, 1024: 336, 1280: 432}[d]
    assert (m.config["query_dim"], m.config["width"], m.config["head_blocks"], len(m.extractors)) == (q, 96, 1, 2)
    assert sum(p.numel() for p in m.parameters()) == lean_parameter_count(d, q, 96, 1)
    if arch == "vits16":
        assert lean_parameter_count(d, q, 96, 1) == 704_304


def test_lean_takes_the_blocks_it_shares_with_brixel_from_layers():
    """BRIXEL-lean imports nothing from brixel.py: the building blocks both use live in
    upsamplers/layers/ (one module per idea)."""
    import ast
    import inspect

    from brixel_plugins.upsamplers import brixel_lean

    imported = {n.module for n in ast.walk(ast.parse(inspect.getsource(brixel_lean))) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"brixel", "brixel_plugins.upsamplers.brixel"}, imported
    for name in ("Extractor", "LayerNorm2d", "check_taps", "conv_bn_relu", "default_taps", "init_weights",
                 "reference_points", "resize_to", "to_map", "to_tokens"):
        assert getattr(brixel_lean, name).__module__.startswith("brixel_plugins.upsamplers.layers."), name
