"""The authors' training recipes of JAFAR and LoftUp as distillation objectives: what defines each
(JAFAR's target is the backbone at the training image itself, never a larger one; LoftUp's stages),
and a few iterations of each release config through tools/distill.py on the tiny backbone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_distill_options

import brixel_plugins.distill  # noqa: F401  (registers the objectives)
from brixel_plugins.distill import losses as L
from brixel_plugins.distill.model import DistillModel
from brixel_plugins.files.upsampler_file import load_upsampler, read_upsampler_file

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(TINY, autocast=None)


def run_distill(config, folder, work_dir, iters=3, **extra):
    opts = tiny_distill_options(2, train_cfg__max_iters=iters, train_cfg__val_interval=iters, **extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("DINOV3_WEIGHTS", None)
    cmd = [sys.executable, "tools/distill.py", config, "--data-root", str(folder), "--work-dir", str(work_dir),
           "--amp", "off", "--cfg-options", *opts]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


def logged_losses(work_dir, key):
    import json

    logs = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))
    assert logs, f"no scalars under {work_dir}"
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines()]
    return [r[key] for r in rows if key in r]


# -- JAFAR ---------------------------------------------------------------------------------------
def test_cosine_mse_is_the_release_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 8, 5, 5, generator=g)
    m, top = target.amin(1, keepdim=True), target.amax(1, keepdim=True)
    cos = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=1)).mean()
    mse = (((pred - m) / (top - m + 1e-6) - (target - m) / (top - m + 1e-6)) ** 2).mean()
    assert float(L.cosine_mse(pred, target)) == pytest.approx(float(cos + mse), rel=1e-6)
    assert float(L.cosine_mse(target, target.clone())) == pytest.approx(0.0, abs=1e-6)


def jafar_model(**objective):
    return DistillModel(backbone=TINY_BACKBONE, upsampler=dict(type="jafar", factor=2, zero_start=True),
                        objective=dict(type="JafarObjective", **objective), teacher_size=64, student_size=32)


def test_jafar_target_is_the_backbone_at_the_training_image_never_a_larger_one(photo):
    """Every backbone pass of a JAFAR step is at the training image's size or smaller; the target is
    F(image) itself, and the student is asked for the target's grid from a 2x-4x smaller input."""
    torch.manual_seed(0)
    model = jafar_model(low_scale=(0.25, 0.5), lambda_consistency=0.1)
    image = photo[..., :64].repeat(2, 1, 1, 1)  # 64 x 64
    sizes, calls = [], []
    student = model.student
    model.backbone.model.patch_embed.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[-1]))
    model.student = lambda x, image_hr=None, last=None, output_size=None: (
        calls.append((x.shape[-1], output_size)) or student(x, image_hr, last, output_size))
    for _ in range(4):
        out = model.objective.losses(model, image)
    assert set(out) == {"loss_main", "loss_consistency"} and all(torch.isfinite(v) for v in out.values())
    assert max(sizes) == 64 and set(sizes) <= {16, 32, 64}
    mains = [c for c in calls if c[0] < 64]
    assert mains and all(c[1] == (4, 4) for c in mains)  # the grid of F(64 px), from 16-32 px inputs
    assert {c[0] for c in mains} <= {16, 32}
    # the target is F(image) itself: a student that returns it has no main loss
    model.student = lambda x, image_hr=None, last=None, output_size=None: (
        model.backbone.last_layer_map(image) if x.shape[-1] < 64 else student(x, image_hr, last, output_size))
    assert float(model.objective.losses(model, image)["loss_main"]) == pytest.approx(0.0, abs=1e-5)


def test_jafar_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="low_scale"):
        jafar_model(low_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="guidance_scale"):
        jafar_model(guidance_scale=0)


def test_jafar_release_config_trains_and_its_weights_load(small_photo_folder, tmp_path):
    run_distill("configs/distill/jafar_vits16.py", small_photo_folder, tmp_path, iters=4)
    main = logged_losses(tmp_path, "loss_main")
    assert len(main) == 4 and all(torch.isfinite(torch.tensor(main)))
    assert "loss_consistency" in read_scalars_keys(tmp_path)
    meta = read_upsampler_file(tmp_path / "upsampler.safetensors")[1]
    assert meta["method"] == "jafar" and meta["extra"]["objective"]["type"] == "JafarObjective"
    from brixel_plugins.backbones.dinov3 import FrozenDINOv3

    up = load_upsampler(tmp_path / "upsampler.safetensors", FrozenDINOv3(**TINY_BACKBONE).spec)
    assert type(up).__name__ == "JAFAR"


def read_scalars_keys(work_dir):
    import json

    log = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))[-1]
    return {k for line in log.read_text().splitlines() for k in json.loads(line)}


# -- LoftUp --------------------------------------------------------------------------------------
def loftup_model(**objective):
    return DistillModel(backbone=TINY_BACKBONE, upsampler=dict(type="loftup", factor=4, zero_start=True),
                        objective=dict(type="LoftUpObjective", **objective), teacher_size=64, student_size=32)


def test_loftup_stage_choice_is_stage_one_and_stage_two_is_refused_with_the_reason():
    obj = loftup_model().objective
    assert obj.stage == 1 and obj.num_jitters == 4 and obj.projection.dim == 64
    with pytest.raises(ValueError, match="only stage 1 is implemented.*SAM"):
        loftup_model(stage=2)


def test_loftup_pseudo_target_pulls_each_superpixel_to_its_mean(photo):
    from brixel_plugins.distill.objectives.loftup import mask_adjust, superpixels

    labels = superpixels(photo, 12, (16, 24))
    assert labels.shape == (1, 16, 24) and 4 <= int(labels.max()) + 1 <= 40
    feats = torch.randn(1, 5, 16, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mask_adjust(feats, labels, 0.0), feats)
    flat = mask_adjust(feats, labels, 1.0)
    for r in labels.unique():
        inside = labels[0] == r
        region = feats[0][:, inside]
        assert torch.allclose(flat[0][:, inside], region.mean(1, keepdim=True).expand_as(region), atol=1e-6)
    half = mask_adjust(feats, labels, 0.8)
    assert torch.allclose(half, 0.2 * feats + 0.8 * flat, atol=1e-6)


def test_loftup_step_has_the_release_terms_and_no_high_resolution_teacher(photo):
    """A stage-1 step: reconstruction, TV and the pseudo-target, every backbone pass at the student's
    size (the views are jitters of the student image), never at the training image's 64 px."""
    torch.manual_seed(0)
    model = loftup_model(superpixels=8)
    image = photo[..., :64].repeat(2, 1, 1, 1)
    sizes = []
    model.backbone.model.patch_embed.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[-1]))
    out = model.objective.losses(model, image)
    assert set(out) == {"loss_rec", "loss_tv", "loss_pseudo"} and all(torch.isfinite(v) for v in out.values())
    assert sizes and set(sizes) == {32}
    sum(out.values()).backward()
    assert model.upsampler.detail.gate.grad is not None


def test_loftup_release_config_trains_and_its_weights_load(small_photo_folder, tmp_path):
    from brixel_plugins.backbones.dinov3 import FrozenDINOv3

    opts = dict(model__upsampler__factor=4)  # 64 px validation target instead of 256
    run_distill("configs/distill/loftup_vits16.py", small_photo_folder, tmp_path, iters=4, **opts)
    for key in ("loss_rec", "loss_tv", "loss_pseudo"):
        vals = logged_losses(tmp_path, key)
        assert len(vals) == 4 and all(torch.isfinite(torch.tensor(vals))), key
    meta = read_upsampler_file(tmp_path / "upsampler.safetensors")[1]
    assert meta["method"] == "loftup" and meta["extra"]["objective"]["type"] == "LoftUpObjective"
    up = load_upsampler(tmp_path / "upsampler.safetensors", FrozenDINOv3(**TINY_BACKBONE).spec)
    assert type(up).__name__ == "LoftUp"
