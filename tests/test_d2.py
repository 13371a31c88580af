"""Detectron2 adapter: pyramid shape contract, frozen-ness, configs, training + COCOEvaluator,
checkpoints without the frozen backbone, resume, non-finite losses, the toy dataset."""
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("detectron2", reason="scripts/setup_env.sh installs detectron2")

from conftest import TINY_DIMS, make_tiny_backbone  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from brixel_plugins.backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from brixel_plugins.d2 import (  # noqa: E402
    DINOv3Backbone,
    FrozenBackboneCheckpointer,
    UpsampledFeaturePyramid,
    ViTDetFeaturePyramid,
    add_dinov3_config,
    engine,
)
from brixel_plugins.files.upsampler_file import save_upsampler  # noqa: E402
from brixel_plugins.toydata.instances import polygon_mask, write_toy_instances  # noqa: E402
from brixel_plugins.upsamplers import build_upsampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
LEARNED = ("lift", "jbu", "featsharp", "brixel")
UPSAMPLERS = ("none", "bilinear") + LEARNED
NEW_METHODS = ("anyup", "jafar", "loftup")  # in the configs' matrix; AnyUp's toy config trains below


def pyramid(upsampler=None, **net_kw):
    net = DINOv3Backbone(upsampler=upsampler, overrides=TINY_DIMS, **net_kw)
    if upsampler is None and net.working_scale == 1:
        return ViTDetFeaturePyramid(net, "last_feat", 32, scale_factors=(4.0, 2.0, 1.0, 0.5),
                                    top_block=LastLevelMaxPool())
    return UpsampledFeaturePyramid(net, 32, top_block=LastLevelMaxPool())


# -- shape contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("upsampler, kw", [
    (None, {}),
    (dict(type="bilinear", factor=1), {}),
    (dict(type="bilinear", factor=2), {}),
    (dict(type="bilinear", factor=4), {}),
    (dict(type="lift", factor=2), {}),
    (dict(type="jbu", factor=4), {}),
    (dict(type="brixel"), {}),
    (dict(type="brixel"), dict(working_scale=0.5)),
    (None, dict(working_scale=0.5)),
], ids=["none", "bilinear1", "bilinear2", "bilinear4", "lift2", "jbu4", "brixel4", "brixel4-scale0.5", "none-scale0.5"])
def test_pyramid_levels_match_output_shape_on_odd_sizes(upsampler, kw):
    torch.manual_seed(0)
    pyr = pyramid(upsampler, **kw).eval()
    shapes = pyr.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == LEVELS
    assert pyr.padding_constraints["size_divisibility"] == pyr.size_divisibility >= 32
    net_strides = {k: s.stride for k, s in pyr.net.output_shape().items()}
    if upsampler is not None:
        assert net_strides["dense"] == net_strides["last_feat"] // pyr.net.upsampler.factor
    images = [torch.randn(3, 37, 61), torch.randn(3, 50, 45)]
    batch = ImageList.from_tensors(images, pyr.size_divisibility, padding_constraints=pyr.padding_constraints)
    h, w = batch.tensor.shape[-2:]
    assert h % pyr.size_divisibility == 0 and w % pyr.size_divisibility == 0
    with torch.no_grad():
        net_out, out = pyr.net(batch.tensor), pyr(batch.tensor)
    for name, s in pyr.net.output_shape().items():
        assert net_out[name].shape == (2, s.channels, h // s.stride, w // s.stride), name
    for name, s in shapes.items():
        assert out[name].shape == (2, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride)), name


def test_upstream_pyramid_misses_divisibility_ours_pads():
    """detectron2's SimpleFeaturePyramid misspells its padding key, so an odd image reaches the
    ViT unpadded; ViTDetFeaturePyramid (same modules) pads it to the true divisibility."""
    torch.manual_seed(0)
    net = DINOv3Backbone(overrides=TINY_DIMS)
    images = [torch.randn(3, 37, 61)]
    stock = SimpleFeaturePyramid(net, "last_feat", 32, scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool())
    batch = ImageList.from_tensors(images, stock.size_divisibility, padding_constraints=stock.padding_constraints)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        stock(batch.tensor)
    ours = ViTDetFeaturePyramid(net, "last_feat", 32, scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool())
    assert ours.state_dict().keys() == stock.state_dict().keys()
    batch = ImageList.from_tensors(images, ours.size_divisibility, padding_constraints=ours.padding_constraints)
    assert tuple(batch.tensor.shape[-2:]) == (64, 64)
    assert ours(batch.tensor)["p2"].shape[-2:] == (16, 16)


def test_pyramid_sources_fine_levels_from_dense_map():
    pyr = pyramid(dict(type="bilinear", factor=4))
    assert pyr.sources == {"p2": "dense", "p3": "dense", "p4": "last_feat", "p5": "last_feat"}
    assert isinstance(pyr.simfp_2[0], torch.nn.Identity)  # dense stride 4 is p2 already
    assert isinstance(pyr.simfp_3[0], torch.nn.MaxPool2d)
    pyr = pyramid(dict(type="bilinear", factor=2))
    assert isinstance(pyr.simfp_2[0][0], torch.nn.ConvTranspose2d) and isinstance(pyr.simfp_3[0], torch.nn.Identity)


def test_bad_strides_are_refused():
    with pytest.raises(ValueError, match="integer strides"):
        DINOv3Backbone(upsampler=dict(type="jbu", factor=3), overrides=TINY_DIMS)
    with pytest.raises(ValueError, match="power of two"):
        DINOv3Backbone(working_scale=0.3, overrides=TINY_DIMS)


# -- the dense map at a stride of the config's choosing (issue 29.2) ------------------------------
@pytest.mark.parametrize("upsampler, kw", [
    (dict(type="bilinear", factor=2), {}),  # factor x grid: stride 8
    (dict(type="anyup", factor=4), dict(working_scale=0.5)),  # the grid at stride 32, factor 4: stride 8
    (dict(type="anyup", factor=3), {}),  # factor 3: stride 16/3, no Detectron2 stride at all
], ids=["bilinear2", "anyup4-scale0.5", "anyup3"])
def test_p2_is_produced_at_stride_4_from_any_grid(upsampler, kw):
    torch.manual_seed(0)
    pyr = pyramid(upsampler, output_stride=4, **kw).eval()
    assert {k: s.stride for k, s in pyr.net.output_shape().items()} == {"dense": 4, "last_feat": 16 / kw.get(
        "working_scale", 1)}
    assert {k: s.stride for k, s in pyr.output_shape().items()} == LEVELS
    assert isinstance(pyr.simfp_2[0], torch.nn.Identity)  # p2 is the dense map itself, no transposed conv
    images = [torch.randn(3, 37, 61), torch.randn(3, 50, 45)]
    batch = ImageList.from_tensors(images, pyr.size_divisibility, padding_constraints=pyr.padding_constraints)
    h, w = batch.tensor.shape[-2:]
    with torch.no_grad():
        net_out, out = pyr.net(batch.tensor), pyr(batch.tensor)
    assert net_out["dense"].shape == (2, 64, h // 4, w // 4)
    for name, s in pyr.output_shape().items():
        assert out[name].shape == (2, 32, math.ceil(h / s.stride), math.ceil(w / s.stride)), name
    if upsampler["type"] == "bilinear":  # asked for the size, not enlarged by the factor and resampled
        expected = torch.nn.functional.interpolate(net_out["last_feat"], size=(h // 4, w // 4), mode="bilinear",
                                                   align_corners=False)
        torch.testing.assert_close(net_out["dense"], expected, rtol=0, atol=0)


def test_output_stride_a_factor_cannot_give_is_refused_at_build():
    with pytest.raises(ValueError, match=r"output_stride=4: lift upsamples by its factor 2 only, which turns the "
                                         r"backbone's stride 16 into 8 px; use an upsampler that gives any size "
                                         r"\(.*anyup.*bilinear.*\)"):
        DINOv3Backbone(upsampler=dict(type="lift", factor=2), output_stride=4, overrides=TINY_DIMS)
    with pytest.raises(ValueError, match="output_stride must be a positive integer"):
        DINOv3Backbone(upsampler=dict(type="bilinear"), output_stride=2.5, overrides=TINY_DIMS)
    net = DINOv3Backbone(upsampler=dict(type="lift", factor=4), output_stride=4, overrides=TINY_DIMS)  # its own
    assert net.output_shape()["dense"].stride == 4 and net.size_divisibility == 16


def test_upsampler_weights_is_refused_with_what_to_write(tmp_path):
    with pytest.raises(ValueError, match=r"model.backbone.net.upsampler_weights is not a key any more: write the "
                                         r"file into the upsampler's config, upsampler=dict\(type='brixel', "
                                         r"weights='up.safetensors'\) \(on a command line: "
                                         r"model.backbone.net.upsampler.weights=up.safetensors\)"):
        DINOv3Backbone(upsampler=dict(type="brixel"), upsampler_weights="up.safetensors", overrides=TINY_DIMS)


# -- frozen-ness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("train_upsampler", [False, True])
def test_frozen_parts_stay_out_of_optimizer_and_in_eval_mode(train_upsampler, toy_files):
    cfg = toy_cfg(toy_files, "brixel")
    cfg.model.backbone.net.train_upsampler = train_upsampler
    model = engine.build_model(cfg)
    optimizer = engine.build_optimizer(cfg, model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert not any(names[i].startswith("backbone.net.featurizer.backbone.") for i in in_optimizer)
    assert any(names[i].startswith("backbone.net.featurizer.upsampler.") for i in in_optimizer) == train_upsampler
    model.train()
    net = model.backbone.net
    assert not net.frozen_dinov3.training and not any(m.training for m in net.frozen_dinov3.modules())
    assert net.upsampler.training == train_upsampler
    assert model.backbone.simfp_2.training and model.roi_heads.training


# -- configs -------------------------------------------------------------------------------------
SHIPPED = sorted(p for p in (ROOT / "configs" / "d2").rglob("*.py") if "common" not in p.parts)


def test_every_upsampler_and_backbone_has_both_heads():
    names = {p.name for p in SHIPPED}
    for head in ("mask_rcnn", "cascade_mask_rcnn"):
        for arch in ("vits16", "vitb16", "vitl16"):
            for up in UPSAMPLERS + NEW_METHODS:
                assert f"{head}_dinov3_{arch}_{up}_100ep.py" in names
    assert any("toy" in n for n in names)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_builds(path):
    cfg = LazyConfig.load(str(path))
    net = cfg.model.backbone.net
    arch = next(a for a in ("vits16", "vitb16", "vitl16") if a in path.name)
    assert net.arch == arch and (net.weights is None) == ("toy" in path.name)
    if "COCO" in path.parts and arch != "vits16":
        return  # with the tiny override the model is the vits16 one, built below
    net.update(weights=None, overrides=TINY_DIMS)
    if net.get("upsampler") and net.upsampler.get("weights"):
        net.upsampler.weights = None
    model = instantiate(cfg.model)
    assert {k: s.stride for k, s in model.backbone.output_shape().items()} == LEVELS
    assert model.input_format == "RGB" and cfg.dataloader.train.mapper.image_format == "RGB"
    assert torch.allclose(model.pixel_mean.flatten(), torch.tensor(IMAGENET_MEAN) * 255)
    assert torch.allclose(model.pixel_std.flatten(), torch.tensor(IMAGENET_STD) * 255)
    assert "lr_factor_func" not in cfg.optimizer.params and cfg.train.amp.enabled == (cfg.train.device == "cuda")
    assert instantiate(cfg.lr_multiplier) is not None
    if "COCO" in path.parts:
        assert cfg.dataloader.train.total_batch_size == 64 and cfg.train.max_iter == 184375
        assert model.backbone.padding_constraints["square_size"] == 1024
        assert ("cascade" in path.name) == (type(model.roi_heads).__name__ == "CascadeROIHeads")


def test_yacs_builder():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    cfg = add_dinov3_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_dinov3_vitdet_backbone"
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_MEAN[0] == pytest.approx(123.675)
    plain = build_backbone(cfg)
    assert isinstance(plain, ViTDetFeaturePyramid) and plain.padding_constraints["size_divisibility"] == 32
    cfg.MODEL.DINOV3.UPSAMPLER, cfg.MODEL.DINOV3.UPSAMPLER_FACTOR = "bilinear", 4
    up = build_backbone(cfg)
    assert isinstance(up, UpsampledFeaturePyramid) and up.net.output_shape()["dense"].stride == 4
    assert {k: s.stride for k, s in up.output_shape().items()} == LEVELS


# -- training, evaluation, checkpoints ------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    """A tiny toy dataset, a tiny DINOv3 weight file and an upsampler file per learned method."""
    root = tmp_path_factory.mktemp("d2")
    backbone = make_tiny_backbone()
    files = {"data": str(write_toy_instances(root / "data", num_train=4, num_val=2, size=64)),
             "dinov3": str(root / "tiny_dinov3.pth")}
    torch.save(backbone.model.state_dict(), files["dinov3"])
    photo = torch.randn(2, 3, 64, 64)
    for method in LEARNED + ("anyup",):
        torch.manual_seed(0)
        up = build_upsampler(dict(type=method), backbone.spec)
        if not up.calibrated:  # FeatSharp's PHI-S statistics
            up.calibrate(backbone.last_layer_map(photo))
            up.finish_calibration()
        files[method] = str(save_upsampler(root / f"{method}.safetensors", up))
    return files


def toy_cfg(files, upsampler, output_dir=None, max_iter=2):
    base = upsampler if upsampler in ("none", "bilinear", "anyup") else "brixel"
    cfg = LazyConfig.load(str(ROOT / "configs" / "d2" / "toy" / f"mask_rcnn_dinov3_vits16_{base}_toy.py"))
    net = cfg.model.backbone.net
    net.update(weights=files["dinov3"], overrides=TINY_DIMS)
    if upsampler in LEARNED:
        net.update(upsampler=dict(type=upsampler, weights=files[upsampler]))
    if upsampler == "anyup":  # AnyUp's toy config as shipped, a tiny file in place of the converted release
        assert net.upsampler == dict(type="anyup", factor=4, weights="checkpoints/anyup_vits16.safetensors")
        net.upsampler.weights = files["anyup"]
    data = dict(root=files["data"], num_train=4, num_val=2, size=64)
    cfg.dataloader.train.dataset.names.update(data)
    cfg.dataloader.test.dataset.names.update(data)
    cfg.dataloader.train.total_batch_size = 2
    cfg.model.backbone.square_pad = 64
    # an untrained detector predicts
    cfg.model.roi_heads.box_predictor.update(test_score_thresh=0.0, test_topk_per_image=5)
    cfg.model.proposal_generator.post_nms_topk = (32, 16)
    cfg.model.roi_heads.batch_size_per_image = 16
    cfg.train.update(device="cpu", max_iter=max_iter, eval_period=max_iter, output_dir=str(output_dir or ""),
                     checkpointer=dict(period=1, max_to_keep=5), log_period=1)
    return cfg


@pytest.mark.parametrize("upsampler", UPSAMPLERS + ("anyup",))
def test_two_iterations_and_coco_evaluation(upsampler, toy_files, tmp_path):
    cfg = toy_cfg(toy_files, upsampler, tmp_path)
    seed_all_rng(0)
    results = engine.train(cfg)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APs"} <= set(results[task]) and isinstance(results[task]["AP"], float)
    ck = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert ck["iteration"] == 1
    # frozen parts: unchanged (they equal their files) and not in the checkpoint
    assert not any(k.startswith("backbone.net.featurizer.backbone.") or k.startswith("backbone.net.dinov3.")
                   for k in ck["model"])
    assert not any(".upsampler." in k for k in ck["model"])
    assert any(k.startswith("backbone.simfp_2.") for k in ck["model"])


def test_checkpoint_round_trip_leaves_out_frozen_parts(toy_files, tmp_path):
    cfg = toy_cfg(toy_files, "brixel")
    torch.manual_seed(1)
    a = engine.build_model(cfg).eval()
    FrozenBackboneCheckpointer(a, str(tmp_path)).save("a", iteration=7)
    ck = torch.load(tmp_path / "a.pth", weights_only=True)
    assert ck["external_weights"] == {"backbone.net.featurizer.backbone": toy_files["dinov3"],
                                      "backbone.net.featurizer.upsampler": toy_files["brixel"]}
    assert (tmp_path / "last_checkpoint").read_text() == "a.pth"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    # the frozen parts are out of the model's state_dict() itself (the one rule of both adapters), the
    # training record is kept; the checkpoint holds exactly that state dict
    frozen = sum(v.numel() for v in a.backbone.net.featurizer.state_dict().values())
    assert frozen > 0 and not any(k.startswith("backbone.net.featurizer.") for k in a.state_dict())
    assert "backbone.net._extra_state" in ck["model"]
    saved = sum(v.numel() for v in ck["model"].values())
    assert ck["model"].keys() == a.state_dict().keys() and saved == sum(v.numel() for v in a.state_dict().values())
    torch.manual_seed(2)
    b = engine.build_model(cfg).eval()
    assert not torch.equal(a.backbone.simfp_2[1].weight, b.backbone.simfp_2[1].weight)
    extra = FrozenBackboneCheckpointer(b).load(str(tmp_path / "a.pth"))
    assert extra["iteration"] == 7
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    fa, fb = a.backbone.net.featurizer.state_dict(), b.backbone.net.featurizer.state_dict()
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_state_dict_leaves_out_what_the_record_rebuilds_as_in_mmseg(toy_files):
    """One rule for both adapters (RecordsTraining): a random-init DINOv3 (seed + digest recorded) and a
    frozen upsampler from its file are not in the backbone's state_dict(), which loads strictly into
    another build; a fine-tuned upsampler stays."""
    pytest.importorskip("mmseg")
    from brixel_plugins.mmseg import DINOv3Featurizer

    kw = dict(weights=None, init_seed=3, upsampler=dict(type="brixel", weights=toy_files["brixel"]))
    net = DINOv3Backbone(overrides=TINY_DIMS, **kw)
    assert list(net.state_dict()) == ["_extra_state"]
    assert list(DINOv3Featurizer(**kw, **TINY_DIMS).state_dict()) == ["_extra_state"]  # the same rule
    again = DINOv3Backbone(overrides=TINY_DIMS, **kw)
    again.load_state_dict(net.state_dict(), strict=True)
    tuned = DINOv3Backbone(overrides=TINY_DIMS, train_upsampler=True, **kw).state_dict()
    assert any(k.startswith("featurizer.upsampler.") for k in tuned)
    assert not any(k.startswith("featurizer.backbone.") for k in tuned)


def test_resume_falls_back_to_newest_loadable_checkpoint(toy_files, tmp_path, caplog):
    def cfg(max_iter):
        c = toy_cfg(toy_files, "bilinear", tmp_path, max_iter=max_iter)
        del c.dataloader.evaluator  # evaluation is tested above
        return c

    seed_all_rng(0)
    engine.train(cfg(2))
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])  # a torn file
    caplog.set_level(logging.WARNING)
    engine.train(cfg(3), resume=True)
    assert "resume: skipped checkpoint" in caplog.text and "model_final.pth" in caplog.text
    assert torch.load(final, weights_only=True)["iteration"] == 2
    assert (tmp_path / "model_0000002.pth").is_file()


def test_tool_stops_on_nonfinite_loss(toy_files, tmp_path):
    """tools/d2_train.py (its command line, as a user runs it) on a diverging lr."""
    overrides = [
        f"model.backbone.net.weights={toy_files['dinov3']}",
        "model.backbone.net.overrides={" + ",".join(f"{k}:{v}" for k, v in TINY_DIMS.items()) + "}",
        f"dataloader.train.dataset.names.root={toy_files['data']}", "dataloader.train.dataset.names.num_train=4",
        "dataloader.train.dataset.names.num_val=2", "dataloader.train.dataset.names.size=64",
        f"dataloader.test.dataset.names.root={toy_files['data']}", "dataloader.test.dataset.names.num_train=4",
        "dataloader.test.dataset.names.num_val=2", "dataloader.test.dataset.names.size=64",
        "dataloader.train.total_batch_size=2", "model.backbone.square_pad=64", "train.device=cpu",
        "train.max_iter=5", f"train.output_dir={tmp_path}", "optimizer.lr=1e30",
    ]
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "d2_train.py"), "--config-file",
                        str(ROOT / "configs" / "d2" / "toy" / "mask_rcnn_dinov3_vits16_bilinear_toy.py"), *overrides],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode != 0
    assert "training stopped:" in r.stderr and "NaN" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "model_final.pth").exists()


# -- toy data ------------------------------------------------------------------------------------
def test_toy_instances_are_coco_with_small_and_thin_objects(toy_files, tmp_path):
    coco = json.loads((Path(toy_files["data"]) / "annotations" / "train.json").read_text())
    assert len(coco["images"]) == 4 and [c["name"] for c in coco["categories"]] == ["disc", "square", "triangle", "bar"]
    for ann in coco["annotations"]:
        mask = polygon_mask(np.array(ann["segmentation"][0]).reshape(-1, 2), 64, 64)
        assert mask.sum() == ann["area"]
        x, y, w, h = ann["bbox"]
        assert w * h >= ann["area"] > 0
    big = write_toy_instances(tmp_path / "big", num_train=24, num_val=0, size=128)
    anns = json.loads((big / "annotations" / "train.json").read_text())["annotations"]
    assert sum(a["area"] < 12 ** 2 for a in anns) >= len(anns) // 4  # COCO "small" is < 32^2
    assert any(a["category_id"] == 4 and a["area"] / max(a["bbox"][2:]) <= 6 for a in anns)  # thin bars
    again = write_toy_instances(tmp_path / "again", num_train=24, num_val=0, size=128)
    assert (again / "annotations" / "train.json").read_bytes() == (big / "annotations" / "train.json").read_bytes()
    with pytest.raises(ValueError, match="written with"):
        write_toy_instances(big, num_train=3, num_val=0, size=128)
