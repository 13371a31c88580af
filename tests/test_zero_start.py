"""The zero start is one mechanism: the Upsampler.forward template computes the base once and every
learned upsampler adds its detail to it in the same way."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import learned_upsamplers

from brixel_plugins.upsamplers import UPSAMPLERS, Upsampler, build_upsampler


def test_every_learned_upsampler_uses_the_template_and_enlarges_once(tiny_backbone, photo):
    """No learned method overrides forward; with zero_start its output is built from ONE bilinear
    enlargement (JBU and FeatSharp used to compute it twice), it reads the layer it enlarges
    (FeatSharp declares the last layer itself), and it is that enlargement."""
    names = learned_upsamplers(tiny_backbone.spec)
    assert {"brixel", "brixel_lean", "lift", "jbu", "featsharp"} <= set(names)
    image_hr = F.interpolate(photo, scale_factor=2, mode="bilinear", align_corners=False)
    last = tiny_backbone.depth - 1
    for name in names:
        cls = UPSAMPLERS[name]
        assert cls.forward is Upsampler.forward, f"{name} overrides the forward template"
        torch.manual_seed(0)
        up = build_upsampler(dict(type=name, zero_start=True), tiny_backbone.spec).eval()
        assert up.layer_indices and up.layer_indices[-1] == last, name
        if not up.calibrated:
            up.calibrate(tiny_backbone.last_layer_map(photo))
            up.finish_calibration()
        calls = []
        enlarge = up.interpolation_base
        up.interpolation_base = lambda source, size: (calls.append(tuple(size)), enlarge(source, size))[1]
        layers = tiny_backbone.layers(photo, up.layer_indices)
        with torch.no_grad():
            out = up(photo, layers, tiny_backbone, image_hr=image_hr)
        assert calls == [tuple(out.shape[-2:])], (name, calls)
        torch.testing.assert_close(out, F.interpolate(layers[last], size=out.shape[-2:], mode="bilinear",
                                                      align_corners=False), rtol=0, atol=1e-5)


@pytest.mark.parametrize("zero_start", [False, True])
def test_lift_steps_compose_the_same_base_and_detail(tiny_backbone, photo, zero_start):
    """LiFT applies one 2x module recursively: factor 4 is the template on the output of a first
    2x step that adds its detail to its own base the same way."""
    torch.manual_seed(0)
    up = build_upsampler(dict(type="lift", factor=4, zero_start=zero_start), tiny_backbone.spec).eval()
    with torch.no_grad():
        for p in up.outc.parameters():  # a trained-looking detail, also with zero_start
            p.normal_(std=0.1)
        layers = tiny_backbone.layers(photo, up.layer_indices)
        x = layers[up.last_layer]
        big = F.interpolate(photo, scale_factor=2, mode="bicubic", align_corners=False)

        def enlarge(m):
            return F.interpolate(m, scale_factor=2, mode="bilinear", align_corners=False) if zero_start else 0

        x1 = enlarge(x) + up.step(x, photo)
        torch.testing.assert_close(up(photo, layers), enlarge(x1) + up.step(x1, big))


def test_the_base_class_keeps_the_layers_a_method_declares(tiny_spec):
    """No method case in Upsampler.__init__: with zero_start an upsampler that reads no layer keeps
    none; FeatSharp declares the last layer (which its base enlarges) itself, only with zero_start."""
    assert Upsampler(tiny_spec, 2, (), zero_start=True).layer_indices == ()
    last = (tiny_spec.depth - 1,)
    assert build_upsampler(dict(type="featsharp", zero_start=True), tiny_spec).layer_indices == last
    assert build_upsampler(dict(type="featsharp"), tiny_spec).layer_indices == ()
