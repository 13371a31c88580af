"""The upsampler contract: registry, DenseFeaturizer, baselines, weight files."""
import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.backbones import WeightFileError
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.io import load_upsampler, read_upsampler_file, save_upsampler
from brixel_plugins.upsamplers import Upsampler, build_upsampler, register_upsampler
from brixel_plugins.utils import atomic_path
from conftest import make_tiny_backbone


def test_unknown_type_names_registered_ones(tiny_spec):
    with pytest.raises(KeyError, match="unknown upsampler type 'nope'.*bilinear"):
        build_upsampler(dict(type="nope"), tiny_spec)


def test_name_clash_is_refused():
    with pytest.raises(KeyError, match="already registered"):
        register_upsampler("bilinear")(type("Other", (Upsampler,), {}))


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("hw", [(32, 32), (48, 80)])
def test_bilinear_and_highres_shapes(tiny_backbone, factor, hw):
    x = torch.randn(2, 3, *hw)
    for kind in ("bilinear", "bicubic", "highres"):
        f = DenseFeaturizer(tiny_backbone, build_upsampler(dict(type=kind, factor=factor), tiny_backbone.spec))
        out = f(x)
        assert out.shape == (2, 64, hw[0] // 16 * factor, hw[1] // 16 * factor), kind
        assert f.output_stride == 16 / factor


def test_highres_is_backbone_on_enlarged_image(tiny_backbone):
    x = torch.randn(1, 3, 32, 48)
    f = DenseFeaturizer.build(tiny_backbone, dict(type="highres", factor=2))
    big = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(f(x), tiny_backbone.last_layer(big))


def test_featurizer_checks_sizes_and_spec(tiny_backbone):
    f = DenseFeaturizer.build(tiny_backbone, dict(type="bilinear"))
    with pytest.raises(ValueError, match="multiple of 16"):
        f(torch.randn(1, 3, 40, 32))
    other = make_tiny_backbone(embed_dim=32)
    with pytest.raises(ValueError, match="upsampler built for"):
        DenseFeaturizer(tiny_backbone, build_upsampler(dict(type="bilinear"), other.spec))


def test_featurizer_train_keeps_backbone_eval(tiny_backbone):
    f = DenseFeaturizer.build(tiny_backbone, dict(type="bilinear")).train()
    assert f.upsampler.training and not f.backbone.training
    assert list(f.trainable_parameters()) == []


def test_save_load_round_trip_and_refusals(tmp_path, tiny_backbone):
    up = build_upsampler(dict(type="bilinear", factor=2, mode="bicubic"), tiny_backbone.spec)
    path = save_upsampler(tmp_path / "up.safetensors", up, extra={"train_images": 7})
    again = load_upsampler(path, tiny_backbone.spec, method="bilinear")
    assert again.config == up.config and again.factor == 2 and again.mode == "bicubic"
    assert again.file_metadata["train_images"] == 7 and "package_version" in again.file_metadata
    with pytest.raises(WeightFileError, match="holds a 'bilinear' upsampler, but 'brixel' was asked for"):
        load_upsampler(path, tiny_backbone.spec, method="brixel")
    other = make_tiny_backbone(embed_dim=32).spec
    with pytest.raises(WeightFileError, match="trained for a backbone with arch=vits16, embed_dim=64.*embed_dim=32"):
        load_upsampler(path, other)


def test_corrupt_foreign_and_missing_files(tmp_path, tiny_spec):
    from safetensors.torch import save_file

    path = save_upsampler(tmp_path / "up.safetensors", build_upsampler(dict(type="bilinear"), tiny_spec))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:20])
    with pytest.raises(WeightFileError, match="truncated or corrupt"):
        read_upsampler_file(cut)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightFileError, match="not a brixel_plugins upsampler file"):
        read_upsampler_file(tmp_path / "foreign.safetensors")
    with pytest.raises(WeightFileError, match="not found"):
        read_upsampler_file(tmp_path / "missing.safetensors")


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
