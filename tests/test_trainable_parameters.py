"""No dead weight: one distillation step of every learned upsampler (its vits16 config, tiny
backbone) gives every trainable parameter a gradient, so DDP runs without
``find_unused_parameters`` (configs/distill/_base_/default_runtime.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from brixel_plugins.backbones import BackboneSpec
from brixel_plugins.upsamplers import UPSAMPLERS, build_upsampler

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(arch="vits16", depth=4, embed_dim=64, num_heads=2, autocast=None)
TINY_SPEC = BackboneSpec("vits16", 64, 4, 2)
TEACHER = 64  # px; the student gets TEACHER / factor


PARAMETER_FREE = {"none", "bilinear", "bicubic", "highres"}


def test_every_learned_upsampler_has_a_vits16_config():
    assert {"brixel", "brixel_lean", "lift", "jbu", "featsharp"} <= set(UPSAMPLERS)
    learned = sorted(set(UPSAMPLERS) - PARAMETER_FREE)
    assert [n for n in learned if not (ROOT / "configs" / "distill" / f"{n}_vits16.py").is_file()] == []


@pytest.mark.parametrize("method", sorted(UPSAMPLERS))
def test_one_step_reaches_every_trainable_parameter(method, photo):
    """(The parameter-free methods only check that they are: nothing to train.)"""
    n_params = sum(p.numel() for p in UPSAMPLERS[method](TINY_SPEC).parameters())
    assert (n_params == 0) == (method in PARAMETER_FREE), n_params
    if not n_params:
        return
    from brixel_plugins.distill.registry import MODELS
    from brixel_plugins.images import resize

    model_cfg = Config.fromfile(str(ROOT / "configs" / "distill" / f"{method}_vits16.py")).model.to_dict()
    factor = build_upsampler(model_cfg["upsampler"], TINY_SPEC).factor
    torch.manual_seed(0)
    model = MODELS.build({**model_cfg, "backbone": TINY_BACKBONE, "teacher_size": TEACHER,
                          "student_size": max(16, TEACHER // factor)})
    images = torch.cat([photo[..., :TEACHER, :TEACHER], photo[..., -TEACHER:, -TEACHER:].flip(-1)])
    for m in model.calibration_targets():  # statistics fitted before training (PHI-S)
        m.calibrate(model.last_layer_map(resize(images, TEACHER // factor)))
        m.finish_calibration()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    model.train()
    loss, _ = model.parse_losses(model(images, mode="loss"))
    loss.backward()
    assert [n for n, p in trainable.items() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
