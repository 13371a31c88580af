"""tools/visualize.py on the tiny backbone: a labelled PCA grid of the expected pixel size."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brixel_plugins.visualize import load_image, square_input, visualize

ROOT = Path(__file__).resolve().parents[1]


def test_inputs(tmp_path):
    name, img = load_image("camera")  # grayscale photo -> 3 channels
    assert name == "camera" and img.shape[2] == 3 and img.dtype == np.uint8
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[1].shape == (20, 30, 3)
    with pytest.raises(FileNotFoundError, match="neither an image file"):
        load_image("no_such_photo")
    x = square_input(img, 48)
    assert x.shape == (1, 3, 48, 48) and abs(float(x.mean())) < 3


def test_library_grid(tiny_backbone, tmp_path):
    p = visualize(["coffee"], tiny_backbone, ["bilinear", "lift:factor=2"], tmp_path / "g.png",
                  size=32, hr_size=64, cell=40)
    # 110 px row labels + 5 columns (image, lr, hr, 2 methods) of 40 + 4 padding; 22 px of column labels
    assert Image.open(p).size == (110 + 5 * 44 + 4, 22 + 44 + 4)


def test_cli_writes_png(tmp_path):
    out = tmp_path / "viz" / "pca.png"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "visualize.py"), "astronaut", "chelsea",
                        "--methods", "bilinear,lift", "--size", "32", "--hr-size", "64", "--cell", "64",
                        "--backbone-overrides", "depth=4,embed_dim=64,num_heads=2", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    im = np.asarray(Image.open(out).convert("RGB"))
    assert im.shape == (22 + 2 * 68 + 4, 110 + 5 * 68 + 4, 3)
    cell = im[26:90, 110 + 4 + 2 * 68:110 + 4 + 2 * 68 + 64]  # row 1, the high-res PCA column
    assert cell.std() > 10  # a picture, not a blank cell
