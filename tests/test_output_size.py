"""Any output size: ``output_size`` on every upsampler, ``output_size`` / ``output_scale`` on DenseFeaturizer."""
import pytest
import torch
import torch.nn.functional as F

from brixel_plugins.featurizer import DenseFeaturizer, requested_output_size
from brixel_plugins.upsamplers import UPSAMPLERS, build_upsampler
from brixel_plugins.upsamplers.base import check_output_size


def test_requested_output_size_rules():
    assert requested_output_size((5, 7)) is None
    assert requested_output_size((5, 7), size=(37, 53)) == (37, 53)
    assert requested_output_size((5, 7), size=12) == (12, 12)
    assert requested_output_size((5, 7), scale=2.5) == (12, 18)  # 12.5 -> 12 (round half to even), 17.5 -> 18
    assert requested_output_size((5, 7), scale=0.01) == (1, 1)
    with pytest.raises(ValueError, match="not both"):
        requested_output_size((5, 7), size=10, scale=2)
    with pytest.raises(ValueError, match="> 0"):
        requested_output_size((5, 7), scale=-1)
    for bad in [(0, 4), (4.5, 4), (4,), "64", (True, 4), None]:
        with pytest.raises(ValueError, match="positive integers"):
            check_output_size(bad)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_interpolation_gives_any_size(tiny_backbone, photo, mode):
    """bilinear / bicubic resize the last layer to exactly the size asked for (the same as
    F.interpolate with that size), and a size equal to factor x the grid is the output without one."""
    up = build_upsampler(dict(type=mode, factor=4), tiny_backbone.spec)
    assert up.any_output_size
    layers = tiny_backbone.layers(photo, up.layer_indices)
    last = layers[tiny_backbone.spec.depth - 1]
    out = up(photo, layers, output_size=(37, 53))
    assert out.shape == (1, 64, 37, 53)
    torch.testing.assert_close(out, F.interpolate(last, size=(37, 53), mode=mode, align_corners=False),
                               rtol=0, atol=0)
    assert torch.equal(up(photo, layers, output_size=(16, 24)), up(photo, layers))


def test_factor_only_methods_refuse_other_sizes(tiny_backbone, photo):
    """Every registered method that does not give any size refuses another one naming itself and the
    size it gives; the size it gives anyway is accepted and changes nothing."""
    spec = tiny_backbone.spec
    fixed = [n for n, c in sorted(UPSAMPLERS.items()) if not c.any_output_size]
    assert {"none", "highres", "brixel", "lift", "jbu", "featsharp"} <= set(fixed)
    for name in fixed:
        torch.manual_seed(0)
        try:
            up = build_upsampler(dict(type=name), spec).eval()
        except (TypeError, ValueError):  # needs more than a name to build
            continue
        grid = up.output_size(tuple(photo.shape[-2:]))
        with pytest.raises(ValueError, match=rf"{name} upsamples by its factor only.*"
                                             rf"{grid[0]}x{grid[1]}.*output_size=\(37, 53\)"):
            up.output_size(tuple(photo.shape[-2:]), (37, 53))
        if not up.calibrated:
            continue
        layers = tiny_backbone.layers(photo, up.layer_indices) if up.layer_indices else {}
        with torch.no_grad():
            with pytest.raises(ValueError, match=f"{name} upsamples by its factor only"):
                up(photo, layers, tiny_backbone, output_size=(37, 53))
            assert torch.equal(up(photo, layers, tiny_backbone, output_size=grid), up(photo, layers, tiny_backbone))


def test_featurizer_output_size_and_scale(tiny_backbone, photo):
    """The constructor's size / scale, a per-call one instead, and the default bit-identical to before."""
    bil = build_upsampler(dict(type="bilinear", factor=4), tiny_backbone.spec)
    plain = DenseFeaturizer(tiny_backbone, bil)(photo)
    assert plain.shape[-2:] == (16, 24)
    sized = DenseFeaturizer(tiny_backbone, bil, output_size=(64, 96))
    assert sized(photo).shape[-2:] == (64, 96)  # the image's own size
    assert sized.features(photo, output_scale=2.5)[0].shape[-2:] == (10, 15)  # 4x6 grid, non-integer scale
    scaled = DenseFeaturizer.build(tiny_backbone, dict(type="bicubic", factor=2), output_scale=1.5)
    assert scaled(photo).shape[-2:] == (6, 9)
    assert torch.equal(DenseFeaturizer(tiny_backbone, bil, output_scale=4)(photo), plain)


def test_featurizer_refuses_sizes_the_method_cannot_give(tiny_backbone, photo):
    brixel = build_upsampler(dict(type="brixel"), tiny_backbone.spec)
    with pytest.raises(ValueError, match="brixel upsamples by its factor 4 only.*output_scale=2.5"):
        DenseFeaturizer(tiny_backbone, brixel, output_scale=2.5)
    DenseFeaturizer(tiny_backbone, brixel, output_scale=4)  # its own factor
    f = DenseFeaturizer(tiny_backbone, brixel, output_size=(37, 53))
    with pytest.raises(ValueError, match="brixel upsamples by its factor only.*16x24"):
        f(photo)
    with pytest.raises(ValueError, match="output_size must be"):
        DenseFeaturizer(tiny_backbone, brixel, output_size=(0, 3))


@pytest.mark.parametrize("name, trained", [("anyup", 2), ("jafar", 2), ("loftup", 16)])
def test_an_any_size_file_serves_a_config_at_another_factor(tiny_backbone, photo, tmp_path, name, trained):
    """The frameworks' configs ask for their stride's factor (Detectron2: 2 or 4) while a recipe trains
    another (LoftUp 16x): an upsampler that gives any output size has no weight tied to its factor, so
    the file serves at the config's factor, with the output of the same weights asked for that size."""
    from brixel_plugins.files.upsampler_file import save_upsampler, upsampler_from_config
    from brixel_plugins.upsamplers import build_upsampler

    torch.manual_seed(0)
    up = build_upsampler(dict(type=name, factor=trained), tiny_backbone.spec).eval()
    path = save_upsampler(tmp_path / f"{name}.safetensors", up)
    at4 = upsampler_from_config(dict(type=name, weights=str(path), factor=4), tiny_backbone.spec).eval()
    assert at4.factor == 4 and at4.file_metadata["trained_at_factor"] == trained
    layers = tiny_backbone.layers(photo, sorted(set(up.layer_indices)))
    h, w = (4 * s // 16 for s in photo.shape[-2:])
    with torch.no_grad():
        want = up(photo, layers, tiny_backbone, image_hr=photo, output_size=(h, w))
        got = at4(photo, layers, tiny_backbone, image_hr=photo)
    assert got.shape[-2:] == (h, w) and torch.equal(got, want)


def test_a_factor_only_file_at_another_factor_is_still_refused(tiny_backbone, tmp_path):
    from brixel_plugins.backbones.weights import WeightFileError
    from brixel_plugins.files.upsampler_file import save_upsampler, upsampler_from_config
    from brixel_plugins.upsamplers import build_upsampler

    lift = build_upsampler(dict(type="lift", factor=2), tiny_backbone.spec)
    path = save_upsampler(tmp_path / "lift.safetensors", lift)
    with pytest.raises(WeightFileError, match="factor=4 in the config, 2 in the file"):
        upsampler_from_config(dict(type="lift", weights=str(path), factor=4), tiny_backbone.spec)
