"""Distillation objectives on hand-built inputs, the release formula against a hand computation,
the zero start of every learned upsampler, and a short training that beats bilinear."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, learned_upsamplers, normalise

import brixel_plugins.distill  # noqa: F401  (registers the objectives)
from brixel_plugins.distill.model import DistillModel
from brixel_plugins.distill.objectives import BrixelObjective, LiftObjective, MultiViewObjective
from brixel_plugins.distill.registry import MODELS
from brixel_plugins.upsamplers import build_upsampler

D = 16
TINY_BACKBONE = dict(TINY, autocast=None)


def maps(seed, b=2, d=D, h=20, w=20):
    """Smooth-ish random maps with some high frequency: (b, d, h, w)."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.randn(b, d, h // 4, w // 4, generator=g), size=(h, w), mode="bilinear",
                        align_corners=False)
    return low + 0.2 * torch.randn(b, d, h, w, generator=g)


def brixel(**kw):
    return BrixelObjective(embed_dim=D, factor=4, **kw)


# -- every objective: zero for identical maps ----------------------------------------------------
def test_every_objective_is_zero_for_identical_maps():
    t = maps(0)
    for obj in (brixel(), brixel(release=True)):
        terms = obj.terms(t, t.clone())
        assert set(terms) == {"loss_l1", "loss_edge", "loss_spectral"}
        assert all(float(v) == 0.0 for v in terms.values()), terms
        assert float(obj.val_loss(t, t.clone())) == 0.0
    assert float(LiftObjective(embed_dim=D, factor=2).val_loss(t, 3 * t)) == pytest.approx(0.0, abs=1e-6)
    objective = LiftObjective(embed_dim=D, factor=2, lambda_l1=1.0)
    assert float(objective.val_loss(t, t.clone())) == pytest.approx(0.0, abs=1e-6)
    mv = MultiViewObjective(embed_dim=D, factor=2, phi_s=True)
    mv.calibrate(maps(1, b=4))
    mv.finish_calibration()
    assert mv.calibrated
    assert float(mv.val_loss(t, t.clone())) == pytest.approx(0.0, abs=1e-10)


def test_objectives_are_built_from_config_by_name():
    obj = MODELS.build(dict(type="BrixelObjective", release=True), default_args=dict(embed_dim=D, factor=4))
    assert isinstance(obj, BrixelObjective) and obj.release
    mv = MODELS.build(dict(type="MultiViewObjective", jitter=dict(type="HomographyJitter", flip=False)),
                      default_args=dict(embed_dim=D, factor=2))
    assert mv.jitter.sample(torch.zeros(3, 3, 32, 32)).shape == (3, 3, 3) and mv.downsampler.factor == 2
    assert not mv.calibrated


# -- scale-free default vs release ---------------------------------------------------------------
def test_scale_free_terms_do_not_change_when_features_are_multiplied_by_ten():
    p, t = maps(2), maps(3)
    once, tenfold = brixel().terms(p, t), brixel().terms(10 * p, 10 * t)
    for k in once:
        assert float(tenfold[k]) == pytest.approx(float(once[k]), rel=1e-4), k
    lift = LiftObjective(embed_dim=D, factor=2, lambda_l1=1.0)
    assert float(lift.val_loss(10 * p, 10 * t)) == pytest.approx(float(lift.val_loss(p, t)), rel=1e-5)
    # the release's raw terms follow the scale: L1 x10, edge MSE x100, spectral (a log ratio) ~unchanged
    once = brixel(release=True).terms(p, t, exact_pca=True)
    tenfold = brixel(release=True).terms(10 * p, 10 * t, exact_pca=True)
    assert float(tenfold["loss_l1"]) == pytest.approx(10 * float(once["loss_l1"]), rel=1e-4)
    assert float(tenfold["loss_edge"]) == pytest.approx(100 * float(once["loss_edge"]), rel=1e-3)


def test_scale_free_edge_term_is_one_for_a_flat_prediction():
    t = maps(4)
    flat = t.mean(dim=(-2, -1), keepdim=True).expand_as(t)
    assert float(brixel(lambda_spectral=0).terms(flat, t)["loss_edge"]) == pytest.approx(1.0, rel=1e-5)


# -- the release formula against a hand computation from its definition --------------------------
def _sobel_valid(x):
    """x (C, H, W) float64 -> gx, gy (C, H-2, W-2): cross-correlation with the 3x3 Sobel kernels."""
    k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    c, h, w = x.shape
    gx, gy = np.zeros((c, h - 2, w - 2)), np.zeros((c, h - 2, w - 2))
    for u in range(3):
        for v in range(3):
            win = x[:, u:u + h - 2, v:v + w - 2]
            gx += k[u, v] * win
            gy += k.T[u, v] * win
    return gx, gy


def _radial_profile_unshifted(x, bins=24):
    """x (C, H, W) -> (bins,): Hann window, |FFT2| ortho, mean over channels, radius from the
    array centre (H//2, W//2) of the UNshifted spectrum, bin = floor(r / r_max * bins)."""
    c, h, w = x.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    mag = np.abs(np.fft.fft2(x * win)) / np.sqrt(h * w)
    mag = mag.mean(0)
    sums, counts = np.zeros(bins), np.zeros(bins)
    r_max = np.hypot(max(h // 2, h - 1 - h // 2), max(w // 2, w - 1 - w // 2))
    for i in range(h):
        for j in range(w):
            b = min(int(np.hypot(i - h // 2, j - w // 2) / r_max * bins), bins - 1)
            sums[b] += mag[i, j]
            counts[b] += 1
    return sums / np.maximum(counts, 1)


def test_release_formula_equals_the_hand_computed_definition():
    """L1 + 1.0 * edge + 0.1 * spectral: edge = MSE(gx) + MSE(gy) of Sobel (no padding) on the
    top-8 PCA projection of the teacher tokens; spectral = MSE of log(profile + 1e-8) over bins
    int(0.3 * 24) = 7 .. 23. The teacher's centred tokens span exactly 8 dimensions, so the
    release's randomised PCA on a random third of them finds the same subspace as the exact PCA
    of all of them below (the edge term depends on the subspace only)."""
    torch.manual_seed(0)
    b, h, w = 2, 18, 22
    coeff = maps(5, b=b, d=8, h=h, w=w)
    mix = torch.randn(8, D, generator=torch.Generator().manual_seed(6))
    target = torch.einsum("bkhw,kd->bdhw", coeff, mix) + torch.linspace(-1, 1, D).view(1, D, 1, 1)
    pred = target + 0.3 * maps(7, b=b, h=h, w=w)
    got = brixel(release=True).terms(pred, target)

    p, t = pred.double().numpy(), target.double().numpy()
    l1 = np.abs(p - t).mean()
    tok = t.transpose(0, 2, 3, 1).reshape(-1, D)
    _, _, vt = np.linalg.svd(tok - tok.mean(0), full_matrices=False)
    basis = vt[:8].T  # (D, 8)
    ex = ey = 0.0
    for i in range(b):
        pp = np.einsum("dhw,dk->khw", p[i], basis)
        tp = np.einsum("dhw,dk->khw", t[i], basis)
        pgx, pgy = _sobel_valid(pp)
        tgx, tgy = _sobel_valid(tp)
        ex += ((pgx - tgx) ** 2).sum()
        ey += ((pgy - tgy) ** 2).sum()
    n = b * 8 * (h - 2) * (w - 2)
    edge = ex / n + ey / n
    spec = np.mean([(np.log(_radial_profile_unshifted(p[i])[7:] + 1e-8)
                     - np.log(_radial_profile_unshifted(t[i])[7:] + 1e-8)) ** 2 for i in range(b)])
    assert float(got["loss_l1"]) == pytest.approx(l1, rel=1e-5)
    assert float(got["loss_edge"]) == pytest.approx(edge, rel=1e-4)
    assert float(got["loss_spectral"]) == pytest.approx(0.1 * spec, rel=1e-4)
    assert float(sum(got.values())) == pytest.approx(l1 + edge + 0.1 * spec, rel=1e-4)


# -- the zero start --------------------------------------------------------------------------------
def test_zero_start_is_exactly_bilinear_interpolation_for_every_learned_upsampler(tiny_backbone, photo):
    names = learned_upsamplers(tiny_backbone.spec)
    assert {"brixel", "lift", "jbu", "featsharp"} <= set(names)
    image_hr = F.interpolate(photo, scale_factor=2, mode="bilinear", align_corners=False)
    last = tiny_backbone.depth - 1
    for name in names:
        torch.manual_seed(0)
        up = build_upsampler(dict(type=name, zero_start=True), tiny_backbone.spec).train()
        if not up.calibrated:  # methods with statistics (PHI-S) get them first
            up.calibrate(tiny_backbone.last_layer_map(photo))
            up.finish_calibration()
        layers = tiny_backbone.layers(photo, sorted({*up.layer_indices, last}))
        out = up(photo, layers, tiny_backbone, image_hr=image_hr)
        ref = F.interpolate(layers[last], scale_factor=up.factor, mode="bilinear", align_corners=False)
        assert out.shape == ref.shape, name
        assert torch.allclose(out, ref, atol=1e-5, rtol=0), (name, float((out - ref).abs().max()))
        # ... and it trains: the zero-initialised projection gets a gradient at once
        out.square().mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in up.parameters()), name


# -- a short training beats bilinear on held-out images --------------------------------------------
def ten_photos(size: int) -> torch.Tensor:
    """The first 10 bundled scikit-image photos, ImageNet-normalised, (10, 3, size, size)."""
    from brixel_plugins.images import load_rgb, skimage_photo_files

    return torch.cat([normalise(np.array(load_rgb(f)), size) for f in skimage_photo_files()[:10]])


@pytest.fixture(scope="module")
def photo_batches():
    """8 training and 2 held-out scikit-image photos, ImageNet-normalised, 64 x 64."""
    imgs = ten_photos(64)
    return imgs[:8], imgs[8:]


def test_short_seeded_training_beats_bilinear_on_held_out_relative_l1(photo_batches):
    train, held_out = photo_batches
    torch.manual_seed(0)
    model = DistillModel(TINY_BACKBONE, dict(type="lift", factor=2, zero_start=True),
                         dict(type="LiftObjective", scales=1), teacher_size=64, student_size=32)
    before = model(held_out, mode="predict")
    # the zero start: the untrained upsampler IS bilinear, and both rows are scored by the same loss
    assert all(r["loss"] == pytest.approx(r["bilinear_loss"], abs=1e-6) for r in before)
    opt = torch.optim.Adam([p for p in model.upsampler.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(12):
        torch.manual_seed(step)
        loss = sum(model(train, mode="loss").values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = model(held_out, mode="predict")
    ours = np.mean([r["upsampler"]["rel_l1"] for r in after])
    bilinear = np.mean([r["bilinear"]["rel_l1"] for r in after])
    assert ours < bilinear - 0.005, (ours, bilinear)  # measured: 0.739 vs 0.753
    assert np.mean([r["loss"] for r in after]) < np.mean([r["bilinear_loss"] for r in after])


def test_components_build_whatever_default_scope_another_framework_left():
    """A Runner of another framework (mmseg's scope, or mmengine's own) leaves its default scope
    active in the process; our registries still build our components, and the scope is restored."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmengine"):
        obj = LiftObjective(embed_dim=D, factor=2)
        assert type(obj.downscale).__name__ == "AntialiasedResize"
        assert DefaultScope.get_current_instance().scope_name == "mmengine"


def _crops(photos: torch.Tensor, size: int, step: int, n: int = 4) -> torch.Tensor:
    """``n`` random square crops (1/2 to all of the side) of random photos, resized to ``size``."""
    from brixel_plugins.images import resize

    g = torch.Generator().manual_seed(step)
    side = photos.shape[-1]
    out = []
    for _ in range(n):
        i = int(torch.randint(len(photos), (1,), generator=g))
        s = int(torch.randint(side // 2, side + 1, (1,), generator=g))
        y, x = (int(torch.randint(side - s + 1, (1,), generator=g)) for _ in range(2))
        out.append(resize(photos[i:i + 1, :, y:y + s, x:x + s], size))
    return torch.cat(out)


def test_featsharp_beats_jbu_beats_bilinear_after_a_short_distillation():
    """The paper's ordering on held-out photos: FeatSharp (whose tiles see the real 128 px pixels)
    > JBU (guided by them, but spreading 64 px features) > bilinear. Both start from bilinear
    (zero start), train 80 seeded steps on the same crops with the same direct objective and
    optimiser, and are scored by relative L1 against the tiny DINOv3 at 128 px."""
    from brixel_plugins.images import resize

    photos = ten_photos(256)
    train, held_out = photos[:8], resize(photos[8:], 128)
    scores = {}
    for name, up in (("jbu", dict(type="jbu", factor=2, zero_start=True)),
                     ("featsharp", dict(type="featsharp", factor=2, zero_start=True, debias_hw=(4, 4)))):
        torch.manual_seed(0)
        model = DistillModel(TINY_BACKBONE, up, dict(type="LiftObjective", scales=1, lambda_l1=1.0),
                             teacher_size=128, student_size=64)
        for part in model.calibration_targets():  # FeatSharp's PHI-S, fitted on training images
            part.calibrate(model.last_layer_map(resize(train, 64)))
            part.finish_calibration()
        opt = torch.optim.Adam([p for p in model.upsampler.parameters() if p.requires_grad], lr=3e-3)
        model.train()
        for step in range(80):
            torch.manual_seed(step)
            loss = sum(model(_crops(train, 128, step), mode="loss").values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        after = model(held_out, mode="predict")
        scores[name] = np.mean([r["upsampler"]["rel_l1"] for r in after])
        scores["bilinear"] = np.mean([r["bilinear"]["rel_l1"] for r in after])
    # measured: FeatSharp 0.330, JBU 0.417, bilinear 0.525
    assert scores["featsharp"] < scores["jbu"] - 0.05 < scores["bilinear"] - 0.1, scores


def test_the_scope_has_a_registry_module_so_mmengine_does_not_warn():
    """mmengine imports ``<default scope>.registry`` whenever it builds in a scope and warns
    ("Failed to import ...") when there is none: ``brixel_plugins.registry`` must exist."""
    import logging

    from mmengine.logging import MMLogger
    from mmengine.registry import DefaultScope

    import brixel_plugins.registry as scope_registry

    assert scope_registry.MODELS is MODELS
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        with DefaultScope.overwrite_default_scope("brixel_plugins"):
            with MODELS.switch_scope_and_registry(None) as registry:
                assert registry is MODELS
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "Failed to import" in r.getMessage()]


# -- one home per multi-view piece -----------------------------------------------------------------
def test_every_registered_distillation_part_is_exported_from_its_package():
    """Registration does not depend on which module was imported first: every class in our
    scope's MODELS / TRANSFORMS is exported by ``brixel_plugins.distill`` or its ``components`` /
    ``objectives`` package (each of which registers what it exports when imported)."""
    import brixel_plugins.distill as distill
    from brixel_plugins.distill import components, objectives
    from brixel_plugins.distill.registry import TRANSFORMS

    exported = {getattr(pkg, name) for pkg in (distill, components, objectives) for name in pkg.__all__
                if isinstance(getattr(pkg, name), type)}
    registered = {cls for reg in (MODELS, TRANSFORMS) for cls in reg.module_dict.values()}
    assert registered and registered <= exported, sorted(c.__name__ for c in registered - exported)


def test_phi_s_calibration_has_one_home():
    """The upsampler and both PHI-S objectives delegate the calibration protocol to one mixin."""
    from brixel_plugins.distill.objectives import FeatSharpObjective
    from brixel_plugins.upsamplers.featsharp import FeatSharp
    from brixel_plugins.upsamplers.layers.phi_s import PhiSCalibration

    for cls in (FeatSharp, MultiViewObjective, FeatSharpObjective):
        for name in ("calibrated", "calibrate", "finish_calibration"):
            assert getattr(cls, name) is getattr(PhiSCalibration, name), (cls.__name__, name)
    plain = MultiViewObjective(embed_dim=D, factor=2, phi_s=False)
    assert plain.calibrated and plain.loss_space(maps(0)) is not None  # nothing to fit


def test_the_calibration_protocol_is_written_once():
    """Upsamplers and objectives share one calibration protocol (nothing to fit by default), which
    PHI-S's mixin refines; no class writes its own no-op copy."""
    from brixel_plugins.distill.objectives import DistillObjective, FeatUpObjective
    from brixel_plugins.upsamplers import UPSAMPLERS, Upsampler
    from brixel_plugins.upsamplers.layers.calibration import Calibration
    from brixel_plugins.upsamplers.layers.phi_s import PhiSCalibration

    assert issubclass(PhiSCalibration, Calibration)
    plain = [Upsampler, DistillObjective, BrixelObjective, LiftObjective, FeatUpObjective,
             *(c for c in UPSAMPLERS.values() if not issubclass(c, PhiSCalibration))]
    for cls in plain:
        assert issubclass(cls, Calibration), cls.__name__
        for name in ("calibrated", "calibrate", "finish_calibration"):
            assert getattr(cls, name) is getattr(Calibration, name), (cls.__name__, name)
    assert LiftObjective(embed_dim=D, factor=2).calibrated


def test_any_objective_takes_any_view_jitter(photo_batches):
    """One jitter interface: the multi-view objective runs on FeatUp's jitter and FeatUp's
    objective on homography views (each objective calls only ``sample`` and ``apply``)."""
    train, _ = photo_batches
    for objective in (dict(type="MultiViewObjective", num_jitters=1, phi_s=False, jitter=dict(type="FeatUpJitter")),
                      dict(type="FeatUpObjective", num_jitters=1, jitter=dict(type="HomographyJitter"))):
        torch.manual_seed(0)
        model = DistillModel(TINY_BACKBONE, dict(type="jbu", factor=2), objective, teacher_size=64, student_size=32)
        losses = model(train[:2], mode="loss")
        assert losses and all(torch.isfinite(v) and v.requires_grad for v in losses.values()), (objective, losses)


def test_featsharp_objective_weights_the_error_by_the_one_uncertainty_formula():
    """FeatSharp's per-view loss is sum(valid * seam * (exp(-s) * err + s / 2)) / sum(valid) with s
    from its uncertainty net: the formula UncertaintyWeighting.nll_map computes for every recipe."""
    from brixel_plugins.distill.objectives import FeatSharpObjective

    torch.manual_seed(0)
    obj = FeatSharpObjective(embed_dim=D, factor=2, uncertainty=dict(type="UncertaintyWeighting", kernel_size=3,
                                                                     hidden=8))
    pred, target = maps(1, h=6, w=6), maps(2, h=6, w=6)
    valid, seam = torch.rand(2, 1, 6, 6), 1 + torch.rand(2, 1, 6, 6)
    s = obj.uncertainty.net(target)
    err = (pred - target).square().mean(1, keepdim=True)
    want = (valid * seam * (torch.exp(-s) * err + s / 2)).sum() / valid.sum()
    torch.testing.assert_close(obj.view_loss(pred, target, valid, seam), want)
    torch.testing.assert_close(obj.uncertainty(err, target), (torch.exp(-s) * err + s / 2).mean())
