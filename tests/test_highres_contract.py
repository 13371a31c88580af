"""The high-resolution input contract: the user's image, the backbone at a working resolution."""
import pytest
import torch

from brixel_plugins.featurizer import DenseFeaturizer, working_hw
from brixel_plugins.images import resize
from brixel_plugins.upsamplers import build_upsampler


def test_working_hw_rules():
    assert working_hw((64, 96)) == (64, 96)
    assert working_hw((1000, 700), size=512) == (512, 512)
    assert working_hw((1000, 700), size=(256, 192)) == (256, 192)
    assert working_hw((1000, 700), scale=0.25) == (256, 176)  # 250 -> 256, 175 -> 176
    assert working_hw((20, 20), scale=0.1) == (16, 16)  # at least one patch
    with pytest.raises(ValueError, match="not a multiple of 16.*working_size"):
        working_hw((100, 96))
    with pytest.raises(ValueError, match="multiples of 16"):
        working_hw((64, 64), size=(100, 64))
    with pytest.raises(ValueError, match="not both"):
        working_hw((64, 64), size=32, scale=0.5)
    with pytest.raises(ValueError, match="> 0"):
        working_hw((64, 64), scale=0)


def test_featurizer_runs_backbone_at_working_size(tiny_backbone):
    image = torch.randn(2, 3, 100, 150)  # any size: only the working image must fit the patch grid
    f = DenseFeaturizer(tiny_backbone, build_upsampler(dict(type="bilinear", factor=2), tiny_backbone.spec),
                        working_scale=0.5)
    dense, layers = f.features(image, layer_indices=[0, -1])
    assert f.working_hw((100, 150)) == (48, 80)
    assert dense.shape == (2, 64, 6, 10)
    assert sorted(layers) == [0, 3] and layers[0].shape == (2, 64, 3, 5)
    torch.testing.assert_close(layers[3], tiny_backbone.last_layer_map(resize(image, (48, 80))))
    with pytest.raises(ValueError, match="not a multiple of 16"):
        DenseFeaturizer(tiny_backbone, f.upsampler)(image)


@pytest.mark.parametrize("kind", ["jbu", "featsharp", "highres"])
def test_real_pixels_methods_read_image_hr(tiny_backbone, kind):
    """Methods with uses_image_hr take their pixels from the user's image: with a sharp image_hr
    the output differs from the one computed from the (blurred) working image alone, and feeding
    the working image as image_hr is the same as giving none."""
    torch.manual_seed(0)
    up = build_upsampler(dict(type=kind, factor=2), tiny_backbone.spec).eval()
    assert up.uses_image_hr
    if not up.calibrated:
        up.calibrate(tiny_backbone.last_layer_map(torch.randn(4, 3, 32, 32)))
        up.finish_calibration()
    hr = torch.randn(1, 3, 128, 128)
    work = resize(hr, (32, 32))
    layers = tiny_backbone.layers(work, up.layer_indices) if up.layer_indices else {}
    with torch.no_grad():
        plain = up(work, layers, tiny_backbone)
        same = up(work, layers, tiny_backbone, image_hr=work)
        sharp = up(work, layers, tiny_backbone, image_hr=hr)
    torch.testing.assert_close(plain, same)
    assert sharp.shape == plain.shape == (1, 64, 4, 4)
    assert (sharp - plain).abs().max() > 1e-5  # float noise is ~1e-7; the pixels moved it


@pytest.mark.parametrize("kind", ["brixel", "lift", "bilinear"])
def test_working_resolution_methods_ignore_image_hr(tiny_backbone, kind):
    torch.manual_seed(0)
    up = build_upsampler(dict(type=kind), tiny_backbone.spec).eval()
    assert not up.uses_image_hr
    work = torch.randn(1, 3, 32, 48)
    layers = tiny_backbone.layers(work, up.layer_indices)
    with torch.no_grad():
        torch.testing.assert_close(up(work, layers, tiny_backbone),
                                   up(work, layers, tiny_backbone, image_hr=torch.randn(1, 3, 128, 192)))
