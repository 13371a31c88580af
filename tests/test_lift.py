"""LiFT: shapes, parameter counts, release key layout and conversion, gradient isolation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones import BackboneSpec, WeightFileError
from brixel_plugins.featurizer import DenseFeaturizer, backbone_layers
from brixel_plugins.files.upsampler_file import convert_release, load_upsampler
from brixel_plugins.upsamplers import build_upsampler, list_upsamplers
from brixel_plugins.upsamplers.lift import LiFT


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_registered_with_flags(tiny_spec):
    assert "lift" in list_upsamplers()
    up = build_upsampler(dict(type="lift", factor=4), tiny_spec)
    assert isinstance(up, LiFT) and up.needs_image and not up.calls_backbone
    assert up.layer_indices == (tiny_spec.depth - 1,)
    assert up.config == {"factor": 4, "zero_start": False}


@pytest.mark.parametrize("c, expected", [(384, 1_187_280), (768, 4_417_296)])
def test_param_count_matches_release(c, expected):
    with torch.device("meta"):
        up = LiFT(BackboneSpec("x", c, 12, 6), factor=8)
    assert n_params(up) == expected  # the same for every factor: one module, applied recursively


def test_release_key_layout():
    with torch.device("meta"):
        sd = LiFT(BackboneSpec("vits16", 384, 12, 6)).state_dict()
    weights = {k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight")}
    assert weights == {"image_convs_1.0", "image_convs_1.1", "image_convs_1.3", "image_convs_1.4",
                       "image_convs_2.0", "image_convs_2.1", "up1.up", "up1.conv_1.double_conv.0",
                       "up1.conv_1.double_conv.1", "up1.conv_1.double_conv.3", "up1.conv_1.double_conv.4", "outc"}
    assert sd["up1.up.weight"].shape == (416, 208, 2, 2)  # ConvTranspose (C+32) -> (C+32)//2
    assert sd["up1.conv_1.double_conv.0.weight"].shape == (192, 208 + 32, 3, 3)
    assert "up1.conv_1.double_conv.0.bias" not in sd and "image_convs_1.0.bias" in sd
    assert sd["outc.weight"].shape == (384, 192, 1, 1)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_shapes_rectangular(tiny_backbone, photo, factor):
    up = build_upsampler(dict(type="lift", factor=factor), tiny_backbone.spec).eval()
    out = DenseFeaturizer(tiny_backbone, up)(photo)  # 64x96 image: 4x6 tokens
    assert out.shape == (1, tiny_backbone.embed_dim, 4 * factor, 6 * factor)
    assert torch.isfinite(out).all()


def test_recursion_uses_enlarged_image(tiny_backbone, photo):
    """factor 4 == step(step(x, image), image enlarged 2x), one module, no extra weights."""
    torch.manual_seed(0)
    up = LiFT(tiny_backbone.spec, factor=4).eval()
    layers = backbone_layers(tiny_backbone, photo, [up])
    with torch.no_grad():
        x = layers[up.last_layer]
        big = F.interpolate(photo, size=(128, 192), mode="bicubic", align_corners=False)
        expected = up.step(up.step(x, photo), big)
        assert torch.allclose(up(photo, layers), expected)
        with pytest.raises(ValueError, match="16x the feature grid"):
            up.step(x, photo[..., :32, :])


def test_bad_factor(tiny_spec):
    with pytest.raises(ValueError, match="2, 4 or 8"):
        LiFT(tiny_spec, factor=3)


def test_only_lift_trains(tiny_backbone, photo):
    model = DenseFeaturizer(tiny_backbone, LiFT(tiny_backbone.spec, factor=2)).train()
    model(photo).square().mean().backward()
    assert all(p.grad is not None for p in model.upsampler.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.upsampler.parameters()}


def test_release_conversion_round_trip(tiny_backbone, photo, tmp_path):
    torch.manual_seed(1)
    src = LiFT(tiny_backbone.spec, factor=2)
    src.train()(photo, backbone_layers(tiny_backbone, photo, [src]))  # non-trivial BN statistics
    src.eval()
    # Like the authors' files: a DataParallel "module." prefix, no BatchNorm counters.
    release = {f"module.{k}": v for k, v in src.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(release, tmp_path / "lift_release.pth")
    dst = convert_release(tmp_path / "lift_release.pth", tmp_path / "lift.safetensors", "lift", tiny_backbone.spec,
                          factor=4)
    up = load_upsampler(dst, tiny_backbone.spec, method="lift").eval()
    assert up.factor == 4 and up.file_metadata["converted_from"] == "lift_release.pth"
    layers = backbone_layers(tiny_backbone, photo, [up])
    with torch.no_grad():
        want = src.step(src.step(layers[up.last_layer], photo),
                        F.interpolate(photo, scale_factor=2, mode="bicubic", align_corners=False))
        assert torch.allclose(up(photo, layers), want, atol=1e-6)


def test_release_refuses_wrong_dim(tiny_spec, tmp_path):
    vits = LiFT(BackboneSpec("vits16", 384, 12, 6))
    torch.save(vits.state_dict(), tmp_path / "lift_vits16.pth")
    with pytest.raises(WeightFileError, match=r"C=384.*C=64"):
        convert_release(tmp_path / "lift_vits16.pth", tmp_path / "out.safetensors", "lift", tiny_spec)
    assert not (tmp_path / "out.safetensors").exists()
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(WeightFileError, match="not a LiFT checkpoint"):
        convert_release(tmp_path / "other.pth", tmp_path / "out.safetensors", "lift", tiny_spec)
    with pytest.raises(WeightFileError, match="not found"):
        convert_release(tmp_path / "missing.pth", tmp_path / "out.safetensors", "lift", tiny_spec)
