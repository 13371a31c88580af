"""The PCA figure (brixel_plugins.visualize.figure) and tools/visualize.py on the tiny backbone: every
cell holds the map its column names, coloured by the high-resolution map's PCA."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from brixel_plugins.images import denormalise
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.visualize.figure import as_uint8_hwc, load_image, pca_figure, square_input
from brixel_plugins.visualize.pca import PCABasis

ROOT = Path(__file__).resolve().parents[1]
PAD, TOP, LEFT = 4, 22, 110  # the grid's cell padding, column-label band, row-label band


def cell(im: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    top, left = TOP + PAD + row * (size + PAD), LEFT + PAD + col * (size + PAD)
    return im[top:top + size, left:left + size]


def test_inputs(tmp_path):
    name, img = load_image("camera")  # grayscale photo -> 3 channels
    assert name == "camera" and img.shape[2] == 3 and img.dtype == np.uint8
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[1].shape == (20, 30, 3)
    with pytest.raises(FileNotFoundError, match="neither an image file"):
        load_image("no_such_photo")
    x = square_input(img, 48)
    assert x.shape == (1, 3, 48, 48) and abs(float(x.mean())) < 3
    chw = torch.from_numpy(img).permute(2, 0, 1)  # a dataset's uint8 (3, H, W) and float forms
    assert np.array_equal(as_uint8_hwc(chw), img) and np.array_equal(as_uint8_hwc(chw.float() / 255), img)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        as_uint8_hwc(chw[:1])


def test_pca_colours_follow_the_leading_directions():
    """Tokens spread along 3 known orthogonal directions with decreasing variance: red, green and
    blue must follow the 1st, 2nd and 3rd coordinate (up to the sign the basis fixes)."""
    gen = torch.Generator().manual_seed(0)
    coords = torch.randn(3, 16 * 16, generator=gen) * torch.tensor([[9.0], [3.0], [1.0]])
    q, _ = torch.linalg.qr(torch.randn(32, 3, generator=gen))  # 3 orthonormal directions in D=32
    fmap = (q @ coords + 0.01 * torch.randn(32, 256, generator=gen)).reshape(32, 16, 16)
    rgb = torch.from_numpy(PCABasis(fmap).rgb(fmap).astype(np.float32)).reshape(-1, 3).T
    for c in range(3):
        r = torch.corrcoef(torch.stack([rgb[c], coords[c]]))[0, 1]
        assert abs(float(r)) > 0.95, (c, float(r))


def test_figure_cells_hold_their_maps(tiny_backbone, tmp_path):
    size, hr, px = 32, 128, 64  # 2x2 and 8x8 token maps, 64 px cells
    up = build_upsampler(dict(type="bilinear", factor=4), tiny_backbone.spec)
    path = pca_figure(["coffee", "chelsea"], tiny_backbone, {"bilinear": up}, tmp_path / "g.png",
                      size=size, hr_size=hr, cell=px)
    im = np.asarray(Image.open(path).convert("RGB"))
    assert im.shape == (TOP + 2 * (px + PAD) + PAD, LEFT + 4 * (px + PAD) + PAD, 3)
    for row, name in enumerate(["coffee", "chelsea"]):
        img = load_image(name)[1]
        lr, hi = square_input(img, size), square_input(img, hr)
        low, ref = tiny_backbone.last_layer_map(lr)[0], tiny_backbone.last_layer_map(hi)[0]
        basis = PCABasis(ref)
        want = [np.asarray(Image.fromarray(denormalise(lr[0])).resize((px, px))), basis.rgb(low, (px, px)),
                basis.rgb(ref, (px, px)),
                basis.rgb(F.interpolate(low[None], scale_factor=4, mode="bilinear")[0], (px, px))]
        for col, w in enumerate(want):
            assert np.array_equal(cell(im, row, col, px), w), (name, col)
        assert cell(im, row, 2, px).std() > 10  # a picture, not a blank cell
    assert not np.array_equal(cell(im, 0, 0, px), cell(im, 1, 0, px))


def test_cli_writes_png(tmp_path):
    out = tmp_path / "viz" / "pca.png"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "visualize.py"), "astronaut", "chelsea",
                        "--methods", "bilinear,lift", "--size", "32", "--hr-size", "64", "--cell", "64",
                        "--backbone-overrides", "depth=4,embed_dim=64,num_heads=2", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    im = np.asarray(Image.open(out).convert("RGB"))
    assert im.shape == (TOP + 2 * 68 + PAD, LEFT + 5 * 68 + PAD, 3)
    assert cell(im, 1, 2, 64).std() > 10  # row 2, the high-resolution PCA column: a picture


def test_the_newest_upsamplers_build_by_name_and_say_they_are_untrained(tiny_backbone, tmp_path):
    """AnyUp, JAFAR and LoftUp built by name (what a user without their files gets) run in the picture,
    each column labelled untrained; the grid has a column each."""
    from brixel_plugins.visualize.figure import build_upsamplers, compare_methods

    ups = build_upsamplers(["anyup", "jafar", "loftup"], tiny_backbone.spec, 4)
    assert [label for label, _ in ups] == ["anyup untrained", "jafar untrained", "loftup untrained"]
    path = compare_methods(["coffee"], tiny_backbone, ["anyup", "jafar", "loftup"], tmp_path / "new.png",
                           size=32, hr_size=128, cell=64)
    im = np.asarray(Image.open(path).convert("RGB"))
    assert im.shape == (TOP + 68 + PAD, LEFT + 6 * 68 + PAD, 3)
    for col in (3, 4, 5):
        assert cell(im, 0, col, 64).std() > 0  # a map, not a blank cell
