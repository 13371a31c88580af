"""Every Detectron2 COCO config gives the dense map at the stride docs/detectron2.md promises (4 for
BRIXEL, AnyUp and bilinear, 8 for LiFT, JBU, FeatSharp, JAFAR and LoftUp), whatever factor the distillation recipe of
its method writes: a stand-in of each recipe's file (its upsampler config, tiny dims) is loaded
through the config; the net's declared and computed strides agree, and give the dense map's size
per 1024 px image of the real model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("detectron2", reason="scripts/setup_env.sh installs detectron2")

from conftest import TINY, TINY_DIMS, make_tiny_backbone  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from mmengine.config import Config  # noqa: E402

from brixel_plugins.backbones import ARCHS  # noqa: E402
from brixel_plugins.files.upsampler_file import save_upsampler  # noqa: E402
from brixel_plugins.upsamplers import build_upsampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO = sorted((ROOT / "configs" / "d2" / "COCO").glob("*.py"))
# docs/detectron2.md
PROMISED = dict(none=16, bilinear=4, brixel=4, anyup=4, lift=8, jbu=8, featsharp=8, jafar=8, loftup=8)
SIDE = 1024


@pytest.fixture(scope="module")
def recipe_files(tmp_path_factory):
    """{(method, arch): stand-in of the file tools/distill.py configs/distill/<method>_<arch>.py
    writes}: that recipe's upsampler config on a tiny backbone of that arch; AnyUp's: the authors'
    one release as tools/convert_weights.py writes it for that arch (its default config)."""
    folder = tmp_path_factory.mktemp("recipes")
    photo = torch.randn(1, 3, 32, 32)
    files = {}
    for method in ("brixel", "lift", "jbu", "featsharp", "jafar", "loftup", "anyup"):
        for arch in ("vits16", "vitb16", "vitl16"):
            recipe = dict(type="anyup") if method == "anyup" else Config.fromfile(
                str(ROOT / "configs" / "distill" / f"{method}_{arch}.py")).model.upsampler.to_dict()
            backbone = make_tiny_backbone(arch=arch)
            up = build_upsampler(recipe, backbone.spec)
            if not up.calibrated:  # FeatSharp's PHI-S statistics
                up.calibrate(backbone.last_layer_map(photo))
                up.finish_calibration()
            files[method, arch] = str(save_upsampler(folder / f"{method}_{arch}.safetensors", up))
    return files


def test_the_jbu_recipe_writes_more_than_the_detector_uses(recipe_files):
    """The case the configs must handle: the JBU recipe distils 16x (stride 1 at 1024 px)."""
    from brixel_plugins.files.upsampler_file import read_upsampler_file

    assert read_upsampler_file(recipe_files["jbu", "vitl16"])[1]["config"]["factor"] == 16


@pytest.mark.parametrize("path", COCO, ids=[p.stem for p in COCO])
def test_coco_config_dense_stride_and_activation_at_1024(path, recipe_files):
    cfg = LazyConfig.load(str(path))
    net = cfg.model.backbone.net
    method = next(m for m in PROMISED if f"_{m}_" in path.name)
    net.update(weights=None, overrides=TINY_DIMS)
    if net.get("upsampler") and net.upsampler.get("weights"):
        assert net.upsampler.weights == (f"checkpoints/anyup_{net.arch}.safetensors" if method == "anyup" else
                                         f"work_dirs/{method}_{net.arch}/best_upsampler.safetensors")
        net.upsampler.weights = recipe_files[method, net.arch]
    backbone = instantiate(net)
    strides = {k: s.stride for k, s in backbone.output_shape().items()}
    assert strides == {"dense": PROMISED[method], "last_feat": 16}
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert out["dense"].shape == (1, TINY["embed_dim"], 64 // PROMISED[method], 96 // PROMISED[method])
    # the real model's dense map of a 1024 px image in bf16: ViT-L at stride 8 is 32 MiB (stride 1: 2 GiB)
    side = SIDE // strides["dense"]
    assert ARCHS[net.arch].embed_dim * side * side * 2 / 2 ** 20 <= 128
