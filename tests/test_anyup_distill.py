"""AnyUp's release recipe (AnyUpObjective) and its cross-backbone claim (distill/transfer.py), on tiny
DINOv3s: what defines the objective (targets = the backbone on each crop at full resolution, cut out
of the output at the crop's tokens; the consistency term), a few iterations through tools/distill.py,
and the same AnyUp weights applied to another width and layer."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_distill_options
from mmengine.config import Config

import brixel_plugins.distill  # noqa: F401  (registers the objectives)
from brixel_plugins.backbones import FrozenDINOv3
from brixel_plugins.distill import losses as L
from brixel_plugins.distill.model import DistillModel
from brixel_plugins.distill.transfer import held_out_layer_maps, score_transfer, transfer, transfer_lines
from brixel_plugins.files.checkpoints import load_checkpoint_file
from brixel_plugins.files.upsampler_file import load_upsampler
from brixel_plugins.images import SKIMAGE_PHOTOS, normalise, skimage_photos
from brixel_plugins.upsamplers import build_upsampler

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(TINY, autocast=None)


def tiny_model(**objective) -> DistillModel:
    # a wide window: on the tiny 2x2 guidance grid the release's (+-10%) holds one token per query,
    # a softmax over one key, which no gradient reaches
    return DistillModel(backbone=TINY_BACKBONE, upsampler=dict(type="anyup", factor=2, window_ratio=0.5),
                        objective=dict(type="AnyUpObjective", **objective), teacher_size=64, student_size=32)


def photo_batch(n: int = 2, size: int = 64) -> torch.Tensor:
    from brixel_plugins.images import resize

    return torch.cat([resize(normalise(torch.from_numpy(p.copy()).permute(2, 0, 1)[None].contiguous()), size)
                      for p in skimage_photos(SKIMAGE_PHOTOS[:n])])


class Recording:
    """The real DistillModel, with every call an objective makes through it recorded."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.teacher_size = model.teacher_size

    def last_layer_map(self, x):
        self.calls.append(("last_layer_map", x))
        return self.model.last_layer_map(x)

    def target(self, x, feats=None):
        self.calls.append(("target", x))
        return self.model.target(x, feats)

    def student(self, x, image_hr=None, last=None, output_size=None):
        out = self.model.student(x, image_hr=image_hr, last=last, output_size=output_size)
        self.calls.append(("student", x, last, output_size, out))
        return out


def test_crop_targets_are_the_backbone_on_the_crop_at_full_resolution():
    torch.manual_seed(0)
    model = tiny_model(crops=3, lambda_consistency=0.0, lambda_downsample=0.0)
    image = photo_batch()
    rec = Recording(model)
    torch.manual_seed(1)
    out = model.objective.losses(rec, image)
    assert set(out) == {"loss_crop"}
    (_, guidance), (_, g, last, size, pred), (_, crops) = rec.calls
    # the guidance is the image at 1/factor, the output the full image's token grid
    assert guidance.shape[-2:] == (32, 32) and size is None and pred.shape[-2:] == (4, 4)
    assert torch.equal(last, model.last_layer_map(guidance)) and g is guidance
    # 3 crops per image at full resolution: patch-aligned windows of the 64 px image itself
    assert crops.shape == (6, 3, 32, 32)
    boxes = []
    for k, c in enumerate(crops):
        i = k // 3
        found = [(t, l) for t in range(3) for l in range(3)
                 if torch.equal(image[i, :, 16 * t:16 * t + 32, 16 * l:16 * l + 32], c)]
        assert found, f"crop {k} is not a patch-aligned window of image {i}"
        boxes.append(found[0])
    # the loss compares the output cut at each crop's tokens with the backbone run on that crop
    cut = torch.stack([pred[k // 3, :, t:t + 2, l:l + 2] for k, (t, l) in enumerate(boxes)])
    expected = L.cosine_mse(cut, model.last_layer_map(crops))
    assert torch.allclose(out["loss_crop"], expected, atol=1e-6)
    # not the same as comparing with the guidance's own (low-resolution) features
    assert not torch.allclose(out["loss_crop"], L.cosine_mse(cut, last.repeat_interleave(3, 0)), atol=1e-3)
    out["loss_crop"].backward()
    assert model.upsampler.qk_proj.weight.grad.abs().sum() > 0


def test_consistency_term_same_features_augmented_guidance():
    torch.manual_seed(0)
    image = photo_batch()
    strong = dict(type="PhotometricAugment", p=1.0, p_rare=0.0, p_gray=1.0, p_noise=1.0)
    none = dict(type="PhotometricAugment", p=0.0, p_rare=0.0, p_gray=0.0, p_noise=0.0)
    values = {}
    for name, aug in (("strong", strong), ("none", none)):
        torch.manual_seed(0)
        model = tiny_model(crops=1, lambda_consistency=0.1, lambda_downsample=0.0, augment=aug)
        rec = Recording(model)
        torch.manual_seed(1)
        out = model.objective.losses(rec, image)
        students = [c for c in rec.calls if c[0] == "student"]
        (_, g0, f0, s0, _), (_, clean_in, f1, s1, clean), (_, aug_in, f2, s2, augmented) = students
        # both at the guidance's pixel size, on the clean guidance's features; only the pixels differ
        assert s1 == s2 == (32, 32) and s0 is None and f1 is f0 and f2 is f0 and clean_in is g0
        assert not clean.requires_grad and augmented.requires_grad
        expected = 0.1 * L.cosine_mse(augmented, clean)
        assert torch.allclose(out["loss_consistency"], expected, atol=1e-7)
        values[name] = float(out["loss_consistency"].detach())
        if name == "strong":
            assert (aug_in - g0).abs().mean() > 0.1  # really augmented
            model.zero_grad()
            out["loss_consistency"].backward()
            assert model.upsampler.image_encoder[0].weight.grad.abs().sum() > 0
    # without augmentation only uint8 rounding is left: the term is ~0
    assert values["none"] < 1e-3 < values["strong"]


def test_objective_refuses_bad_settings():
    with pytest.raises(ValueError, match="crops must be >= 1"):
        tiny_model(crops=0)
    with pytest.raises(ValueError, match="multiple of the patch"):
        tiny_model(crop_size=40)
    with pytest.raises(ValueError, match="larger than the training images"):
        tiny_model(crop_size=80)
    with pytest.raises(ValueError, match="needs an augment"):
        tiny_model(augment={})
    with pytest.raises(ValueError, match="probability"):
        tiny_model(augment=dict(type="PhotometricAugment", p=2.0))
    with pytest.raises(ValueError, match="multiple of 16 x the factor"):
        DistillModel(backbone=TINY_BACKBONE, upsampler=dict(type="anyup", factor=2),
                     objective=dict(type="AnyUpObjective"), teacher_size=48, student_size=16)


def test_anyup_recipe_trains_through_tools_distill(small_photo_folder, tmp_path):
    # validation's student grid 2x2 (AnyUp's 3x3 key convolution needs 2 tokens a side), tiny_model's window
    opts = tiny_distill_options(1, train_cfg__max_iters=2, train_cfg__val_interval=2, model__student_size=32,
                                model__objective__crops=2, model__upsampler__window_ratio=0.5)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("DINOV3_WEIGHTS", None)
    p = subprocess.run([sys.executable, "tools/distill.py", "configs/distill/anyup_vits16.py", "--data-root",
                        str(small_photo_folder), "--work-dir", str(tmp_path), "--amp", "off", "--cfg-options", *opts],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    out = p.stdout + p.stderr
    assert "Iter(train) [2/2]" in out and "loss_crop" in out and "loss_consistency" in out
    assert "loss_downsample" in out
    spec = FrozenDINOv3(**TINY_BACKBONE).spec
    up = load_upsampler(tmp_path / "upsampler.safetensors", spec, "anyup")
    ckpt = load_checkpoint_file(str(tmp_path / "iter_2.pth"))  # the checkpoint loads
    for k, v in up.state_dict().items():
        assert torch.equal(ckpt["state_dict"][f"upsampler.{k}"], v), k
    assert all(torch.isfinite(v).all() for v in up.state_dict().values())


def test_transfer_applies_the_same_weights_to_another_width_and_layer():
    torch.manual_seed(0)
    small = FrozenDINOv3(**TINY_BACKBONE)
    wide = FrozenDINOv3("vits16", depth=3, embed_dim=96, num_heads=2, init_seed=1)
    trained = build_upsampler(dict(type="anyup", factor=2), small.spec).eval()
    images = [photo_batch(1, 64), photo_batch(2, 64)[1:]]
    for backbone, layer in ((wide, -1), (small, 1)):
        up = transfer(trained, backbone, layer)
        assert up.spec.embed_dim == backbone.embed_dim and up.layer_indices == (layer % backbone.depth,)
        for k, v in trained.state_dict().items():
            assert torch.equal(up.state_dict()[k], v), k
        pred, base, target = held_out_layer_maps(backbone, up, images[0], 32)
        assert pred.shape == base.shape == target.shape == (1, backbone.embed_dim, 4, 4)
        # the target is the layer asked for, on the image at factor x the student size
        hr = torch.nn.functional.interpolate(images[0], size=(64, 64), mode="bicubic", antialias=True)
        assert torch.allclose(target, backbone.layers(hr, [layer % backbone.depth])[layer % backbone.depth].float())
        scores = score_transfer(up, backbone, images, 32)
        for who in ("upsampler", "bilinear"):
            assert all(torch.isfinite(torch.tensor(v)) for v in scores[who].values())
            assert set(scores[who]) == {"cosine", "rel_l1", "fidelity"}
    # the demo's block says when a "layer" is the last layer's map again (a random init's residuals ~ 0)
    same = dict(scores, change_from_last_layer=1e-6)
    assert "!! this layer's map differs" in transfer_lines({"x, layer 2": same, "seconds": 1.0})
    assert "!!" not in transfer_lines({"x, layer 2": dict(scores, change_from_last_layer=0.3)})
    # what must be refused
    with pytest.raises(ValueError, match="only AnyUp"):
        transfer(build_upsampler(dict(type="lift"), small.spec), wide)
    with pytest.raises(ValueError, match="per-channel gate"):
        transfer(build_upsampler(dict(type="anyup", factor=2, zero_start=True), small.spec), wide)
    with pytest.raises(ValueError, match="does not exist"):
        transfer(trained, wide, 3)
    with pytest.raises(ValueError, match="at least one"):
        score_transfer(trained, small, [], 32)


def test_demo_recipe_is_the_release_recipe_at_the_demos_4x():
    from brixel_plugins.distill.demo import demo_config

    cfg = demo_config(str(ROOT / "configs" / "distill" / "demo" / "anyup.py"), None, "/t", "/v", "/w")
    release = Config.fromfile(str(ROOT / "configs" / "distill" / "anyup_vits16.py"))
    assert cfg.model.upsampler == dict(type="anyup", factor=4, zero_start=False)  # transferable: no gate
    assert cfg.model.objective == release.model.objective
    assert release.model.objective == dict(type="AnyUpObjective", crops=4, lambda_consistency=0.1,
                                           lambda_downsample=0.1, augment=dict(type="PhotometricAugment"))
    assert release.optim_wrapper.optimizer == dict(type="AdamW", lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5)
    assert (release.model.teacher_size, release.model.student_size, release.model.upsampler.factor) == (448, 224, 2)
    assert release.train_dataloader.batch_size == 4 and release.param_scheduler == []
    assert cfg.optim_wrapper.optimizer.lr == 1e-3 and cfg.train_cfg.max_iters == 20


def test_cosine_mse_is_the_release_formula():
    torch.manual_seed(0)
    t, p = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    lo, hi = t.amin(1, keepdim=True), t.amax(1, keepdim=True)
    by_hand = (1 - torch.nn.functional.cosine_similarity(p, t, dim=1)).mean() + \
        ((p - lo) / (hi - lo + 1e-6) - (t - lo) / (hi - lo + 1e-6)).square().mean()
    assert torch.allclose(L.cosine_mse(p, t), by_hand, atol=1e-6)
    assert float(L.cosine_mse(t, t.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(L.cosine_mse(10 * p, 10 * t)) == pytest.approx(float(L.cosine_mse(p, t)), rel=1e-4)
