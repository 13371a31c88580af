"""Distillation losses, metrics and data on hand-built inputs with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brixel_plugins.distill import losses as L
from brixel_plugins.distill.data import ImageFolderDataset, ResumableSampler, split_files
from brixel_plugins.distill.metrics import cosine_similarity, fidelity, map_metrics, relative_l1
from brixel_plugins.images import skimage_photo_files


def smooth_maps(b=2, d=16, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def checkerboard(h, w):
    return ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 * 2 - 1).float()


def edge(pred, target, relative=False):
    basis, mean = L.pca_basis(target)
    return L.edge_loss(pred, target, basis, mean, relative=relative)


def test_identical_inputs_give_zero_for_every_term():
    t = smooth_maps()
    assert float(L.l1_loss(t, t.clone())) == 0.0
    assert float(edge(t, t.clone())) == 0.0
    for shift in (True, False):
        assert float(L.spectral_loss(t, t.clone(), shift=shift)) == 0.0
    assert float(L.cosine_distance(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_l1_known_value_and_constant_offset_is_invisible_to_edge_and_spectral():
    t = smooth_maps()
    assert float(L.l1_loss(t + 0.25, t)) == pytest.approx(0.25, abs=1e-6)
    assert float(edge(t + 0.25, t)) < 1e-9  # Sobel of a constant shift is zero
    assert float(L.spectral_loss(t + 0.25, t)) < 1e-5  # a constant lives at DC, not in the high bins


def test_pure_high_frequency_pattern_moves_only_the_spectral_term():
    # broadband target: float32 FFT round-off must stay small against every bin's magnitude
    t = smooth_maps() + 0.1 * torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    p = t + 0.5 * checkerboard(16, 16)
    # Sobel's [-1, 0, 1] sees the same value two pixels apart: a checkerboard has no gradient
    assert float(edge(p, t)) < 1e-9
    shifted = float(L.spectral_loss(p, t, shift=True))
    assert shifted > 1e-3
    # the release's unshifted spectrum puts Nyquist at the centre (radius 0): its "high" bins miss it
    unshifted = float(L.spectral_loss(p, t, shift=False))
    assert shifted > 100 * unshifted


def test_radial_profile_places_nyquist_in_the_last_bin_only_when_shifted():
    x = checkerboard(16, 16).expand(1, 3, 16, 16)
    prof = L.radial_profile(x, bins=8, shift=True)[0]
    assert int(prof.argmax()) == 7
    prof = L.radial_profile(x, bins=8, shift=False)[0]
    assert int(prof.argmax()) == 0


def test_edge_term_sees_an_edge_and_its_relative_form_is_one_for_a_flat_prediction():
    t = torch.zeros(1, 8, 12, 12)
    t[:, :, :, 6:] = 1.0
    t = t + 0.01 * smooth_maps(1, 8, 12, 12)
    p = torch.zeros_like(t) + 0.5  # flat: loses the edge
    assert float(edge(p, t)) > 0.1
    assert float(edge(p, t, relative=True)) == pytest.approx(1.0, rel=1e-6)


def test_spectral_bins_start_at_the_floor_of_min_radius_times_bins():
    assert L.first_high_bin(24, 0.3) == 7  # int(7.2), as released
    assert L.first_high_bin(10, 0.35) == 3


def test_cosine_distance_known_values():
    a = torch.zeros(1, 2, 1, 1)
    a[:, 0] = 1
    b = torch.zeros(1, 2, 1, 1)
    b[:, 1] = 1
    assert float(L.cosine_distance(a, b)) == pytest.approx(1.0)
    assert float(L.cosine_distance(a, -a)) == pytest.approx(2.0)
    assert float(L.cosine_distance(a, 3 * a)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("align_corners, padding_mode", [(False, "border"), (True, "reflection")])
def test_homography_identity_and_warp_flip(align_corners, padding_mode):
    from brixel_plugins.distill.components.homography import random_homographies, warp

    x = torch.arange(16.0).view(1, 1, 4, 4)
    for dtype in (torch.float32, torch.float64):  # our views are float32, FeatSharp's float64
        ident = torch.eye(3, dtype=dtype)[None]
        out, valid = warp(x, ident, align_corners, padding_mode)
        assert torch.allclose(out, x, atol=1e-5) and bool(valid.all())
        flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=dtype))[None]
        assert torch.allclose(warp(x, flip, align_corners, padding_mode)[0], x.flip(-1), atol=1e-5)
    shift = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])[None]  # a quarter of the width
    _, valid = warp(x, shift, align_corners, padding_mode)
    assert valid[0, 0].sum(1).tolist() == [3.0] * 4  # the rightmost column samples outside
    g = torch.Generator().manual_seed(0)
    h = random_homographies(3, generator=g)
    assert h.shape == (3, 3, 3) and torch.isfinite(h).all()


def test_metrics_known_values():
    y = smooth_maps(1, 8, 8, 8)
    assert cosine_similarity(y, y) == pytest.approx(1.0, abs=1e-6)
    assert relative_l1(2 * y, y) == pytest.approx(1.0, rel=1e-6)
    # predicting the per-channel mean is fidelity 1 by definition
    assert fidelity(y.mean(dim=(-2, -1), keepdim=True).expand_as(y), y) == pytest.approx(1.0, rel=1e-5)
    assert fidelity(y + 0.01 * torch.randn_like(y), y) > 10
    assert set(map_metrics(y, y)) == {"cosine", "rel_l1", "fidelity"}


# -- data ----------------------------------------------------------------------------------------
@pytest.fixture()
def folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(tmp_path / "a" / "tall.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 120, 4), dtype=np.uint8)).save(tmp_path / "a" / "b" / "wide.webp")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "a" / "grey.tif")
    (tmp_path / "a" / "b" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_folder_is_recursive_and_unreadable_files_are_left_out(folder):
    ds = ImageFolderDataset(str(folder), size=32)
    assert len(ds) == 4  # 4 images; the broken one is left out (not counted); txt ignored
    outs = [ds[i] for i in range(len(ds))]
    assert all(o["image"].shape == (3, 32, 32) and o["image"].dtype == torch.uint8 for o in outs)
    assert list(ds.unreadable) == [str(folder / "a" / "b" / "broken.png")]


def test_small_image_is_padded_then_cover_resized(folder):
    ds = ImageFolderDataset(str(folder), size=64, list_file=None)
    i = [k for k, p in enumerate(ds.files) if p.endswith("small.png")][0]
    img = ds[i]["image"]
    # 20x30 < 64: padded to a 30x30 square (black rows top and bottom), then resized to 64
    assert img[:, :8].float().mean() < 2 and img[:, -8:].float().mean() < 2
    assert img[:, 28:36].float().mean() > 60


def test_list_file_and_split(folder, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("small.png\n# comment\na/tall.jpg\n")
    ds = ImageFolderDataset(str(folder), size=16, list_file=str(lst))
    assert [p.split("/")[-1] for p in ds.files] == ["small.png", "tall.jpg"]
    train = ImageFolderDataset(str(folder), size=16, split="train", num_val=2)
    val = ImageFolderDataset(str(folder), size=16, split="val", num_val=2)
    # the split is of all 5 files; the broken one is then left out of its part (and not counted)
    all_train, all_val = sorted(train.files + list(train.unreadable)), sorted(val.files + list(val.unreadable))
    assert len(all_val) == 2 and len(all_train) == 3 and not set(all_train) & set(all_val)
    assert split_files(all_train + all_val, 2) == (all_train, all_val)
    assert [p.split("/")[-1] for p in {**train.unreadable, **val.unreadable}] == ["broken.png"]
    assert len(train) + len(val) == 4


def test_random_crops_are_a_function_of_seed_epoch_index(folder):
    ds = ImageFolderDataset(str(folder), size=16, crop="random", seed=3)
    a, b = ds[(0, 1)]["image"], ds[(0, 1)]["image"]
    assert torch.equal(a, b)
    assert any(not torch.equal(ds[(0, 1)]["image"], ds[(e, 1)]["image"]) for e in range(1, 6))


def test_sampler_skip_matches_the_tail_of_a_full_pass(folder):
    ds = ImageFolderDataset(str(folder), size=16)
    s = ResumableSampler(ds, seed=5)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2)
    s.skip(3)
    assert list(s) == full[3:]
    assert all(e == 2 for e, _ in full) and sorted(i for _, i in full) == list(range(len(ds)))


def test_bundled_skimage_photos_exist():
    files = skimage_photo_files()
    assert len(files) >= 8
    ds = ImageFolderDataset(source="skimage", size=32, split="val", num_val=3)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 32, 32)


def test_attention_downsampler_blurs_maps_smaller_than_the_blur():
    """FeatUp's settings on a map smaller than the 5x5 blur's reflect padding (a 2x2 map pooled to
    1x1): the blur falls back to replicate padding instead of failing."""
    from brixel_plugins.distill.components.attention_downsampler import FEATUP, AttentionDownsampler, gaussian_blur

    torch.manual_seed(0)
    down = AttentionDownsampler(8, 2, **FEATUP).eval()
    x = torch.randn(1, 8, 2, 2)
    assert down(x).shape == (1, 8, 1, 1)
    torch.testing.assert_close(gaussian_blur(torch.ones(1, 2, 2, 2), 5, 1.0), torch.ones(1, 2, 2, 2))


def test_the_attention_downsampler_is_one_registered_module():
    import importlib.util

    from brixel_plugins.distill.components import attention_downsampler
    from brixel_plugins.distill.registry import MODELS

    assert MODELS.get("AttentionDownsampler") is attention_downsampler.AttentionDownsampler
    assert importlib.util.find_spec("brixel_plugins.distill.components.downsampler") is None


@pytest.mark.parametrize("jitter", ["HomographyJitter", "FeatSharpJitter", "FeatUpJitter"])
def test_every_view_jitter_has_one_interface(jitter):
    """``sample(batch) -> view``; ``apply(x, view) -> (x in the view, valid)`` for the batch and
    for a map of it at another size."""
    from brixel_plugins.distill.components import ViewJitter
    from brixel_plugins.distill.registry import TRANSFORMS

    jit = TRANSFORMS.build(dict(type=jitter))
    assert isinstance(jit, ViewJitter)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 48)
    view = jit.sample(x)
    for y in (x, torch.randn(2, 5, 8, 12)):
        seen, valid = jit.apply(y, view)
        assert seen.shape == y.shape and valid.shape == (2, 1, *y.shape[-2:])
        assert 0 <= float(valid.min()) and float(valid.max()) == 1.0


def test_a_fraction_holds_out_at_least_one_image():
    """The folder recipe's ``num_val=0.01`` on 10 photos rounded to no validation image, and the
    val split then refused to start; a fraction now holds out at least one (and never all)."""
    files = [f"p{i}.jpg" for i in range(10)]
    train, val = split_files(files, 0.01)
    assert len(val) == 1 and len(train) == 9 and not set(train) & set(val)
    assert len(split_files(files, 0.25)[1]) == 2  # round(2.5) as before
    with pytest.raises(ValueError, match="cannot hold out 1 of 1"):
        split_files(["only.jpg"], 0.01)
