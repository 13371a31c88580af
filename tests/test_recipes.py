"""Each release recipe fact the distillation configs carry, checked against hand-computed values."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from mmengine.config import Config
from PIL import Image

from brixel_plugins.distill.components import UncertaintyWeighting
from brixel_plugins.distill.registry import MODELS, TRANSFORMS

# -- learned uncertainty ------------------------------------------------------------------------

def test_uncertainty_featup_is_gaussian_nll_of_scalenet():
    """FeatUp: sigma = exp(conv1x1(x) + 0.1) >= 1e-4, loss = mean(err / (2 sigma^2) + log sigma)."""
    torch.manual_seed(0)
    u = UncertaintyWeighting.featup(8)
    feats, err = torch.randn(2, 8, 5, 6), torch.rand(2, 30, 5, 6)
    sigma = torch.exp(u.net(feats) + 0.1).clamp_min(1e-4)
    want = (err / (2 * sigma ** 2) + sigma.log()).mean()
    torch.testing.assert_close(u(err, feats), want)
    # ScaleNet's init: PyTorch's default conv init scaled by 0.1
    assert u.net.weight.abs().max() <= 0.1 / math.sqrt(8) + 1e-6


def test_uncertainty_featsharp_net_and_formula():
    """FeatSharp: 5x5 conv C -> 256 -> 1 predicting s, loss = mean(exp(-s) * err + s / 2)."""
    u = MODELS.build(dict(type="UncertaintyWeighting", dim=8, kernel_size=5, hidden=256))
    assert [m.weight.shape for m in u.net if isinstance(m, torch.nn.Conv2d)] == [(256, 8, 5, 5), (1, 256, 5, 5)]
    feats, err = torch.randn(1, 8, 7, 7), torch.rand(1, 8, 7, 7)
    s = u.net(feats)
    torch.testing.assert_close(u(err, feats), (torch.exp(-s) * err + s / 2).mean())


# -- BRIXEL: data policy, spectral bins, learning-rate switch -------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "distill"


def _photo(w: int, h: int) -> Image.Image:
    """A real photo (scikit-image's astronaut) resized to w x h."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((w, h), Image.BILINEAR)


@pytest.mark.parametrize("w, h, canvas, paste, crop", [
    # 500x375: both sides padded to 1024 on their own, the photo centred at native scale, no resize
    (500, 375, (1024, 1024), ((1024 - 500) // 2, (1024 - 375) // 2), (0, 0)),
    # 1200x800: only the height padded (to 1024); scale max(1024/1024, 1024/1200) = 1; crop 88 px in
    (1200, 800, (1200, 1024), (0, (1024 - 800) // 2), ((1200 - 1024) // 2, 0)),
])
def test_brixel_release_canvas(w, h, canvas, paste, crop, tmp_path):
    from brixel_plugins.distill.data import ImageFolderDataset
    from brixel_plugins.distill.transforms import BrixelReleaseCanvas

    plan = BrixelReleaseCanvas().plan(w, h, 1024)
    assert plan["canvas"] == canvas and plan["paste"] == paste and plan["crop"] == crop
    assert plan["scale"] == 1.0 and plan["resized"] == canvas  # never enlarged, nothing to shrink
    photo = _photo(w, h)
    photo.save(tmp_path / "p.png")
    ds = ImageFolderDataset(str(tmp_path), size=1024, crop=dict(type="BrixelReleaseCanvas"))
    out = ds[0]["image"].permute(1, 2, 0).numpy()
    assert out.shape == (1024, 1024, 3)
    # the photo sits at native scale at paste - crop; everything else is black
    x0, y0 = paste[0] - crop[0], paste[1] - crop[1]
    src = np.array(photo)[max(0, -y0):, max(0, -x0):]
    x0, y0 = max(0, x0), max(0, y0)
    hh, ww = min(src.shape[0], 1024 - y0), min(src.shape[1], 1024 - x0)
    np.testing.assert_array_equal(out[y0:y0 + hh, x0:x0 + ww], src[:hh, :ww])
    mask = np.ones((1024, 1024), bool)
    mask[y0:y0 + hh, x0:x0 + ww] = False
    assert out[mask].max() == 0
    if (w, h) == (500, 375):
        assert mask.mean() == pytest.approx(1 - 500 * 375 / 1024 ** 2)  # 82% black


def test_brixel_release_canvas_shrinks_large_images_to_cover():
    from brixel_plugins.distill.transforms import BrixelReleaseCanvas

    plan = BrixelReleaseCanvas().plan(2000, 1500, 1024)
    assert plan["canvas"] == (2000, 1500) and plan["scale"] == pytest.approx(1024 / 1500)
    assert plan["resized"] == (math.ceil(2000 * 1024 / 1500), 1024) and plan["crop"] == (171, 0)
    assert BrixelReleaseCanvas()(_photo(2000, 1500), 1024).size == (1024, 1024)


def test_brixel_spectral_bins_start_at_int_of_0_3_times_24():
    from brixel_plugins.distill import losses as L
    from brixel_plugins.distill.objectives import BrixelObjective

    assert L.first_high_bin(24, 0.3) == 7  # int(7.2), not ceil
    torch.manual_seed(0)
    pred, target = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    obj = BrixelObjective(embed_dim=8, factor=4, release=True, lambda_edge=0.0)
    pp, pt = L.radial_profile(pred, 24, shift=False), L.radial_profile(target, 24, shift=False)
    want = 0.1 * torch.nn.functional.mse_loss(torch.log(pp[:, 7:] + 1e-8), torch.log(pt[:, 7:] + 1e-8))
    torch.testing.assert_close(obj.terms(pred, target)["loss_spectral"], want)


def test_brixel_lr_is_1e4_for_epoch_0_then_1e3_from_the_first_iteration_of_epoch_1():
    from mmengine.optim.scheduler import MultiStepLR

    cfg = Config.fromfile(str(CONFIGS / "brixel_release_vits16.py"))
    (sched,) = cfg.param_scheduler
    kw = {k: v for k, v in sched.items() if k not in ("type", "convert_to_iter_based")}
    assert sched["type"] == "MultiStepLR" and sched["convert_to_iter_based"]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    epoch_length = 5
    s = MultiStepLR.build_iter_from_epoch(opt, epoch_length=epoch_length, **kw)
    lrs = []
    for _ in range(2 * epoch_length):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs == pytest.approx([1e-4] * epoch_length + [1e-3] * epoch_length)
    assert cfg.model.objective.release and cfg.train_dataloader.dataset.crop == dict(type="BrixelReleaseCanvas")


# -- LiFT: squash, colour jitter, strided scales, keys --------------------------------------------

def test_lift_release_config_builds_strided_scales_colour_jitter_and_squash():
    cfg = Config.fromfile(str(CONFIGS / "lift_vits16.py"))
    obj = MODELS.build(cfg.model.objective, default_args=dict(embed_dim=8, factor=2))
    x = torch.randn(1, 3, 448, 448)
    assert torch.equal(obj.downscale(x, 224), x[:, :, ::2, ::2])
    assert torch.equal(obj.downscale(x, 112), x[:, :, ::4, ::4])
    assert obj.colour_jitter.ranges == dict(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2),
                                            hue=(-0.2, 0.2))
    assert type(obj.facet).__name__ == "LastLayerTokens"
    assert cfg.optim_wrapper.optimizer == dict(type="Adam", lr=1e-3, weight_decay=0.0) and cfg.param_scheduler == []
    squash = TRANSFORMS.build(cfg.train_dataloader.dataset.crop)
    assert squash(_photo(500, 300), 448).size == (448, 448)  # aspect ratio squashed, nothing cut
    keys = Config.fromfile(str(CONFIGS / "lift_keys_vits16.py")).model.objective.facet
    assert keys == dict(type="LastBlockKeys")


def test_colour_jitter_draws_per_image_within_its_ranges():
    from brixel_plugins.backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD
    from brixel_plugins.distill.components import ColourJitter
    from brixel_plugins.images import normalise

    torch.manual_seed(0)
    grey = normalise(torch.full((300, 3, 2, 2), 0.5))
    out = ColourJitter(brightness=0.2, contrast=0.0, saturation=0.0, hue=0.0)(grey)
    pixels = out * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    factors = pixels.mean((1, 2, 3)) / 0.5  # brightness multiplies the pixels
    assert 0.8 - 1e-4 <= factors.min() < 0.82 and 1.18 < factors.max() <= 1.2 + 1e-4
    assert len(set(factors.round(decimals=4).tolist())) > 250  # one draw per image


def test_last_block_keys_are_the_qkv_keys_of_the_patch_tokens(tiny_backbone, photo):
    m = tiny_backbone.model
    keys = tiny_backbone.last_block_keys(photo)
    with torch.no_grad():
        x = m.norm_pre(m._pos_embed(m.patch_embed(photo))[0])
        _, rope = m._pos_embed(m.patch_embed(photo))
        for blk in m.blocks[:-1]:
            x = blk(x, rope=rope)
        attn = m.blocks[-1].attn
        d = tiny_backbone.embed_dim
        qkv = torch.nn.functional.linear(m.blocks[-1].norm1(x), attn.qkv.weight,
                                         torch.cat([attn.q_bias, attn.k_bias, attn.v_bias]))
        want = qkv[:, m.num_prefix_tokens:, d:2 * d].transpose(1, 2).reshape(1, d, 4, 6)
    torch.testing.assert_close(keys, want)


# -- FeatUp JBU: jitter set, downsampler, feature space, lr groups --------------------------------

def test_featup_jitter_is_pad_zoom_crop_flip_one_draw_per_batch():
    from brixel_plugins.distill.components import FeatUpJitter

    cfg = Config.fromfile(str(CONFIGS / "jbu_vits16.py"))
    jit = TRANSFORMS.build(cfg.model.objective.jitter)
    assert isinstance(jit, FeatUpJitter)
    assert (jit.max_pad, jit.max_zoom, jit.zoom_prob, jit.flip) == (20, 2.0, 0.5, True)
    torch.manual_seed(0)
    views = [jit.sample(torch.zeros(2, 3, 224, 224)) for _ in range(400)]
    zoomed = [v.zoom for v in views if v.zoom != 1.0]
    assert 0.4 < len(zoomed) / len(views) < 0.6 and min(zoomed) >= 1.0 and max(zoomed) < 2.0
    assert 0.4 < np.mean([v.flip for v in views]) < 0.6
    for v in views:  # every crop position that fits the padded (zoomed) image, integers
        room = int((224 + 40) * v.zoom) - 224
        assert 0 <= v.top <= room and 0 <= v.left <= room
    assert max(v.top for v in views if v.zoom == 1.0) == 40  # the whole range is reachable
    # apply: reflect pad 20, bilinear zoom, crop, flip, the same for every image of the batch
    x = torch.randn(2, 3, 64, 64)
    v = type(views[0])((64, 64), 1.5, 7, 30, True)
    want = torch.nn.functional.interpolate(torch.nn.functional.pad(x, [20] * 4, mode="reflect"), scale_factor=1.5,
                                           mode="bilinear", align_corners=False)[..., 7:71, 30:94].flip(-1)
    seen, valid = jit.apply(x, v)
    torch.testing.assert_close(seen, want)
    # valid: 0 on the reflected padding the crop shows (the 20 px border, zoomed by 1.5), 1 on the picture
    inside = torch.nn.functional.interpolate(torch.nn.functional.pad(torch.ones(1, 1, 64, 64), [20] * 4),
                                             scale_factor=1.5, mode="bilinear", align_corners=False)
    torch.testing.assert_close(valid, inside[..., 7:71, 30:94].flip(-1).expand(2, 1, 64, 64))
    assert valid[0, 0, 0].max() == 0 and valid[0, 0, -1, 0] == 1  # the top row lies in the padding


def test_featup_downsampler_is_blurred_softmax_pooling_over_16_px_cells():
    from brixel_plugins.distill.components.attention_downsampler import gaussian_blur

    cfg = Config.fromfile(str(CONFIGS / "jbu_vits16.py"))
    assert cfg.model.upsampler.factor == 16 and cfg.model.student_size == 224
    down = MODELS.build(cfg.model.objective.downsampler, default_args=dict(dim=8, factor=16))
    assert (down.factor, down.kernel_size, down.padding) == (16, 16, 0)  # kernel = stride = factor
    assert (down.blur_size, down.blur_sigma, down.logit_dropout, down.init) == (5, 1.0, 0.2, "featup")
    assert down.saliency[0].p == 0.2 and down.w.shape == (256,)
    assert 0 < (down.w - 1).abs().max() < 0.1 and 0 < down.b.abs().max() < 0.1  # noisy init
    x = torch.randn(1, 8, 32, 48)
    with torch.no_grad():
        down.saliency[1].weight.zero_()
        down.saliency[1].bias.zero_()
        down.w.fill_(1.0)
        down.b.zero_()
    down.eval()
    want = torch.nn.functional.avg_pool2d(gaussian_blur(x, 5, 1.0), 16)  # uniform weights: average pooling
    torch.testing.assert_close(down(x), want)
    k = torch.exp(-(torch.arange(5.0) - 2) ** 2 / 2)
    k = k / k.sum()
    blurred = gaussian_blur(x, 5, 1.0)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [2] * 4, mode="reflect"),
                                     (k[:, None] * k[None]).expand(8, 1, 5, 5), groups=8)
    torch.testing.assert_close(blurred, ref)


def test_featup_feature_space_projection_uncertainty_and_crf_as_configured():
    from brixel_plugins.distill.components import ChannelNorm, RandomProjection, SampledCRFLoss

    obj_cfg = Config.fromfile(str(CONFIGS / "jbu_vits16.py")).model.objective
    obj = MODELS.build(obj_cfg, default_args=dict(embed_dim=8, factor=16))
    assert obj.num_jitters == 5 and isinstance(obj.space, ChannelNorm)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(obj.space(x), torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,))
                               .permute(0, 3, 1, 2))
    assert isinstance(obj.projection, RandomProjection) and obj.projection.dim == 30
    proj = obj.projection.sample(2, 8)
    torch.testing.assert_close(proj.norm(dim=1), torch.ones(2, 30))
    ref = UncertaintyWeighting.featup(8)
    assert obj.uncertainty.extra_repr() == ref.extra_repr() and obj.uncertainty.net.kernel_size == (1, 1)
    assert isinstance(obj.crf, SampledCRFLoss) and obj.crf_weight == 0.001
    assert (obj.crf.alpha, obj.crf.beta, obj.crf.gamma, obj.crf.w1, obj.crf.w2, obj.crf.n_samples) == \
        (0.1, 0.15, 0.005, 10.0, 3.0, 1000)


def test_featup_lr_groups_and_early_clip_as_built_by_the_config():
    from brixel_plugins.distill.registry import OPTIM_WRAPPER_CONSTRUCTORS

    cfg = Config.fromfile(str(CONFIGS / "jbu_vits16.py"))
    assert cfg.train_dataloader.batch_size == 4 and cfg.train_cfg.max_epochs == 1 and cfg.param_scheduler == []
    model = MODELS.build({**cfg.model.to_dict(), "backbone": TINY, "teacher_size": 16, "student_size": 16})
    ow_cfg = cfg.optim_wrapper.to_dict()
    wrapper = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(type=ow_cfg.pop("constructor"), optim_wrapper_cfg=ow_cfg))(model)
    assert type(wrapper.optimizer).__name__ == "NAdam" and len(wrapper.optimizer.param_groups) == 1
    (group,) = wrapper.optimizer.param_groups
    assert group["lr"] == 1e-3
    want = {id(p) for n, p in model.named_parameters()
            if n.startswith(("upsampler.", "objective.downsampler.", "objective.uncertainty."))}
    assert {id(p) for p in group["params"]} == want and want
    assert (wrapper.warmup_max_norm, wrapper.warmup_steps, wrapper.max_norm) == (1e-4, 10, float("inf"))


def test_warmup_clip_continues_after_resume(tmp_path):
    """The warm-up clip counts optimizer steps from the resumed iteration (DistillLoop hands the
    wrapper its count as mmengine's loops do), not from 0 after every restart."""
    import torch
    from torch import nn

    from brixel_plugins.distill.optim import WarmupClipOptimWrapper

    def grad_norm_after_step(start_iter):
        torch.manual_seed(0)
        model = nn.Linear(4, 4)
        wrapper = WarmupClipOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0), clip_grad=dict(max_norm=5.0),
                                         warmup_max_norm=1e-4, warmup_steps=10)
        wrapper.initialize_count_status(model, start_iter, 100)
        wrapper.backward(model(torch.ones(2, 4)).pow(2).sum())
        wrapper.step()
        return float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())

    assert grad_norm_after_step(0) == pytest.approx(1e-4, rel=1e-3)  # warm-up: clipped hard
    assert grad_norm_after_step(12) > 1e-2  # step 13 of the run: the normal clip (5.0)



# -- every shipped distillation config ---------------------------------------------------------
DISTILL_CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs" / "distill").glob("*.py"))


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=lambda p: p.stem)
def test_distill_config_names_its_backbone_and_a_registered_upsampler(path):
    """``<method>_<arch>.py`` loads, trains that arch, and names a registered upsampler and objective."""
    from brixel_plugins.backbones.dinov3 import arch_info
    from brixel_plugins.upsamplers import UPSAMPLERS

    cfg = Config.fromfile(str(path))
    arch = path.stem.rsplit("_", 1)[1]
    assert cfg.model.backbone.arch == arch
    arch_info(arch)  # a known DINOv3
    assert cfg.model.upsampler.type in UPSAMPLERS
    assert cfg.model.upsampler.type.split("_")[0] in path.stem  # brixel_lean_*, featsharp_*, ...
    assert MODELS.get(cfg.model.objective.type) is not None


# -- the demo's recipes ----------------------------------------------------------------------------
DEMO_RECIPES = sorted((CONFIGS / "demo").glob("*.py")) + sorted((CONFIGS / "demo" / "compare").glob("*.py"))


@pytest.mark.parametrize("path", DEMO_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_demo_recipe_builds_under_the_demo_protocol(path, tmp_path):
    """Every recipe of tools/demo.py and tools/compare_recipes.py is a config file that the demo
    protocol turns into a distillation config (96 px student, 384 px teacher, its iterations,
    validations evenly spaced) whose model builds (tiny backbone)."""
    from brixel_plugins.distill.demo import STUDENT, TEACHER, demo_config

    cfg = demo_config(str(path), None, "/train", "/val", str(tmp_path / "work"), iters=7)
    assert cfg.demo.label.strip() and cfg.demo.batch_size == cfg.train_dataloader.batch_size == 2
    assert (cfg.model.student_size, cfg.model.teacher_size) == (STUDENT, TEACHER)
    assert (cfg.train_cfg.max_iters, cfg.train_cfg.val_interval, cfg.default_hooks.checkpoint.interval) == (7, 2, 7)
    assert cfg.train_dataloader.dataset.root == "/train" and cfg.val_dataloader.dataset.val_root == "/val"
    once = demo_config(str(path), None, "/train", "/val", str(tmp_path / "work"), validations=1)
    assert once.train_cfg.max_iters == once.train_cfg.val_interval == cfg.demo.iters
    model = MODELS.build({**cfg.model.to_dict(), "backbone": TINY})
    assert model.upsampler.factor * STUDENT == TEACHER  # every recipe predicts DINOv3 at 4x


def test_demo_recipes_carry_the_demo_departures():
    from brixel_plugins.distill.demo import demo_config

    lift = demo_config(str(CONFIGS / "demo" / "lift.py"), None, "/t", "/v", "/w")
    assert lift.model.upsampler == dict(type="lift", factor=4, zero_start=True)
    assert lift.model.objective.downscale == dict(type="AntialiasedResize") and lift.model.objective.lambda_l1 == 1.0
    assert lift.train_dataloader.dataset.crop == "random" and lift.train_cfg.max_iters == 200
    featsharp = demo_config(str(CONFIGS / "demo" / "featsharp.py"), None, "/t", "/v", "/w")
    assert featsharp.model.objective == dict(type="LiftObjective", scales=1, lambda_l1=1.0)
    assert featsharp.custom_hooks[0] == dict(type="PhiSStatsHook", num_batches=8)
    release = demo_config(str(CONFIGS / "demo" / "compare" / "lift_release.py"), None, "/t", "/v", "/w")
    assert release.train_dataloader.dataset.crop == dict(type="SquashResize")
    assert release.model.objective.downscale == dict(type="StridedSubsample")
    ours = demo_config(str(CONFIGS / "demo" / "compare" / "lift_ours.py"), None, "/t", "/v", "/w")
    assert ours.train_dataloader.dataset.crop == "random" and ours.model.objective.colour_jitter is None
    with pytest.raises(ValueError, match="not a demo recipe"):
        demo_config(str(CONFIGS / "lift_vits16.py"), None, "/t", "/v", "/w")
