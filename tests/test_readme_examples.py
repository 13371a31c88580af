"""The Python examples of README.md and docs/python_api.md run as written: every ```python block of
a page, in order, in one namespace per page, in a folder holding the files they name (a real-size
random DINOv3 ViT-S/16 in timm's layout, the upsampler exports tools/distill.py would write, a
photo)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from brixel_plugins.backbones import FrozenDINOv3
from brixel_plugins.featurizer import working_hw
from brixel_plugins.files.upsampler_file import save_upsampler
from brixel_plugins.upsamplers import build_upsampler

ROOT = Path(__file__).resolve().parents[1]
README, API = ROOT / "README.md", ROOT / "docs" / "python_api.md"


def blocks(page: Path) -> list:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def run_blocks(page: Path) -> dict:
    namespace = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for block in blocks(page):
            exec(compile(block, str(page), "exec"), namespace)
    return namespace


@pytest.fixture
def readme_files(tmp_path, monkeypatch):
    """The files the examples name, as the tools would write them, in a fresh working directory."""
    from PIL import Image
    from safetensors.torch import save_file
    from skimage import data

    monkeypatch.chdir(tmp_path)
    Image.fromarray(data.astronaut()).resize((176, 144)).save("photo.jpg")  # 144 x 176: no multiple of 32
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random init
        backbone = FrozenDINOv3("vits16")
    save_file(backbone.model.state_dict(), "dinov3_vits16.safetensors")
    for method, kw in (("brixel", {}), ("featsharp", dict(factor=2))):
        up = build_upsampler(dict(type=method, **kw), backbone.spec)
        if not up.calibrated:  # what the distillation does first (FeatSharp's PHI-S statistics)
            up.calibrate(backbone.last_layer_map(torch.randn(2, 3, 64, 64)))
            up.finish_calibration()
        save_upsampler(Path("work_dirs") / f"{method}_vits16" / "best_upsampler.safetensors", up)
    return tmp_path


def test_pages_have_the_python_api_examples():
    assert any("DenseFeaturizer.build" in b for b in blocks(README))
    assert any("DenseFeaturizer.build" in b and "working_scale" in b for b in blocks(API))


def test_readme_python_blocks_run_as_written(readme_files):
    namespace = run_blocks(README)
    assert tuple(namespace["dense"].shape) == (1, 384, 56, 56)  # as its comment says: 4x the 14 x 14 tokens
    assert torch.isfinite(namespace["dense"]).all()
    assert namespace["model"]["backbone"]["upsampler"]["type"] == "brixel"  # the MMSegmentation config line


def test_python_api_page_blocks_run_as_written(readme_files):
    namespace = run_blocks(API)
    # the API example's results have the shapes its comments promise, for this 144 x 176 photo:
    # DINOv3 at half size (rounded to whole patches: 64 x 96, 4 x 6 tokens), FeatSharp 2x
    h, w = (s // 16 for s in working_hw((144, 176), scale=0.5))
    assert (h, w) == (4, 6)
    assert tuple(namespace["dense"].shape) == (1, 384, 2 * h, 2 * w)
    assert {k: tuple(v.shape) for k, v in namespace["layers"].items()} == {11: (1, 384, h, w)}
    assert tuple(namespace["feats"][11].shape) == (1, 384, 14, 14)
    assert torch.isfinite(namespace["dense"]).all()
