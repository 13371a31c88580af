"""Our components refuse state dicts that are not theirs, whichever loader calls them (issue 27.2),
and a random-init DINOv3 is a recorded fact: drawn from a seed, recorded in checkpoints, refused
under another random backbone (issue 27.3)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from brixel_plugins.backbones import FrozenDINOv3
from brixel_plugins.files.checkpoints import RECORD_FORMAT, CheckpointMismatchError, decode_record, encode_record

ROOT = Path(__file__).resolve().parents[1]


def random_dinov3(**kw) -> FrozenDINOv3:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random-init warning
        return FrozenDINOv3(**{**TINY, **kw})


# -- the seeded random init ----------------------------------------------------------------------
def test_random_dinov3_is_drawn_from_its_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = random_dinov3(init_seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream was not consumed
    torch.manual_seed(999)  # the global seed does not matter
    b = random_dinov3(init_seed=5)
    c = random_dinov3(init_seed=6)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["patch_embed.proj.weight"], sc["patch_embed.proj.weight"])
    assert a.init_seed == 5 and a.init_digest == b.init_digest != c.init_digest
    assert random_dinov3().init_seed == 0  # no seed given: seed 0, still reproducible
    with pytest.raises(ValueError, match="init_seed must be an int"):
        FrozenDINOv3(**TINY, init_seed=None)


# -- MMSegmentation ------------------------------------------------------------------------------
mmseg = pytest.importorskip("mmseg") if os.environ.get("BRIXEL_REQUIRE_STACK") != "1" else __import__("mmseg")
from test_checkpoints import STOCK_TOOLS, TOY, build, run, toy_cfg, toy_options  # noqa: E402


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    return str(write_toy_segmentation(tmp_path_factory.mktemp("toy") / "shapes", num_train=4, num_val=2, size=64))


@pytest.fixture(scope="module")
def dinov3_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny_dinov3.pth"
    torch.save(random_dinov3(init_seed=3).model.state_dict(), path)
    return path


def save_mmengine(state: dict, path: Path, classes=("a", "b", "c", "d", "e")) -> str:
    """A checkpoint as mmengine's Runner writes one (state_dict + meta with the dataset's classes)."""
    from mmengine.runner.checkpoint import save_checkpoint

    meta = {"dataset_meta": {"classes": list(classes), "palette": [[i, i, i] for i in range(len(classes))]}}
    save_checkpoint({"state_dict": state, "meta": meta}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_root):
    """The toy config (random DINOv3, init_seed 0) and a checkpoint of its model, as training writes it."""
    folder = tmp_path_factory.mktemp("toy_ckpt")
    cfg = toy_cfg(toy_root, folder)
    model = build(cfg)
    torch.nn.init.normal_(model.decode_head.conv_seg.weight)  # a head that is not its init
    return cfg, model, save_mmengine(model.state_dict(), folder / "toy.pth")


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    """A tiny stock SegFormer's checkpoint: another model, saved by mmengine."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    cfg = dict(type="EncoderDecoder", data_preprocessor=dict(type="SegDataPreProcessor"),
               backbone=dict(type="MixVisionTransformer", in_channels=3, embed_dims=8, num_stages=4,
                             num_layers=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], patch_sizes=[7, 3, 3, 3],
                             sr_ratios=[8, 4, 2, 1], out_indices=(0, 1, 2, 3)),
               decode_head=dict(type="SegformerHead", in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3], channels=16,
                                num_classes=5, norm_cfg=dict(type="BN", requires_grad=True)))
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg)
    return save_mmengine(model.state_dict(), tmp_path_factory.mktemp("segformer") / "segformer.pth")


def test_stock_loaders_refuse_another_models_checkpoint(toy, segformer, tmp_path):
    """Issue 27.2: a SegFormer checkpoint under our config gave maps and an mIoU (strict=False)."""
    from mmengine.runner import load_checkpoint
    from mmseg.apis import MMSegInferencer, init_model

    cfg, _, _ = toy
    refused = rf"{re.escape(segformer)} does not fit this model \(model.backbone\):\n  - it holds no training record"
    with pytest.raises(CheckpointMismatchError, match=refused):
        init_model(cfg.copy(), segformer, device="cpu")
    with pytest.raises(CheckpointMismatchError, match=refused):
        load_checkpoint(build(cfg), segformer, map_location="cpu")
    unexpected = r"tensors of the checkpoint are not in this model: \['backbone.layers"
    with pytest.raises(CheckpointMismatchError, match=unexpected):
        MMSegInferencer(model=cfg.copy(), weights=segformer, device="cpu")


def test_stock_test_tool_exits_nonzero_on_another_models_checkpoint(segformer, toy_root, tmp_path):
    """mmseg's tools/test.py with mmengine's own Runner (its load_checkpoint loads with strict=False)."""
    code, log = run([STOCK_TOOLS / "test.py", TOY, segformer, "--work-dir", tmp_path, "--cfg-options",
                     "runner_type=Runner", *toy_options(toy_root)], cwd=ROOT)
    assert code != 0 and not re.search(r"mIoU: \d", log) and "it holds no training record" in log, log[-3000:]


def test_head_only_checkpoint_is_refused(toy, tmp_path):
    from mmengine.runner import load_checkpoint
    from mmseg.apis import init_model

    cfg, model, _ = toy
    head_only = save_mmengine({k: v for k, v in model.state_dict().items() if k.startswith("decode_head.")},
                              tmp_path / "head.pth")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)head.pth does not fit this model.*no training record"):
        init_model(cfg.copy(), head_only, device="cpu")
    with pytest.raises(CheckpointMismatchError, match="no training record"):
        load_checkpoint(build(cfg), head_only, map_location="cpu")


def test_class_count_mismatch_is_named_as_such(toy, monkeypatch):
    from mmseg.apis import init_model

    cfg, model, ckpt = toy
    three = cfg.copy()
    three.merge_from_dict({"model.decode_head.num_classes": 3})
    with pytest.raises(CheckpointMismatchError, match=r"toy.pth does not fit this model \(decode_head, a "
                                                      r"LinearProbeHead\):\n  - decode_head.conv_seg.weight: .*the "
                                                      r"checkpoint has 5 classes, this model 3"):
        init_model(three, ckpt, device="cpu")
    from brixel_plugins.mmseg.inference import load_segmentor  # tools/infer.py's loader: the same message

    with pytest.raises(CheckpointMismatchError, match="the checkpoint has 5 classes, this model 3"):
        load_segmentor(three, ckpt)
    # a partial load asked for: torch's own loader (which raises on any shape mismatch) loads the rest
    monkeypatch.setenv("BRIXEL_PARTIAL_LOAD", "1")
    partial = build(three)
    before = partial.decode_head.conv_seg.weight.clone()
    with pytest.warns(UserWarning, match="the checkpoint has 5 classes, this model 3"):
        partial.load_state_dict(model.state_dict(), strict=False)
    assert torch.equal(partial.decode_head.conv_seg.weight, before)
    assert torch.equal(partial.decode_head.bn.weight, model.decode_head.bn.weight)


def test_own_checkpoint_loads_with_every_stock_loader_and_partial_load_stays_possible(toy, segformer, monkeypatch):
    from mmengine.runner import load_checkpoint
    from mmseg.apis import MMSegInferencer, init_model

    cfg, model, ckpt = toy
    loaded = init_model(cfg.copy(), ckpt, device="cpu")
    assert torch.equal(loaded.decode_head.conv_seg.weight, model.decode_head.conv_seg.weight)
    load_checkpoint(build(cfg), ckpt, map_location="cpu", strict=True)
    MMSegInferencer(model=cfg.copy(), weights=ckpt, device="cpu")
    monkeypatch.setenv("BRIXEL_PARTIAL_LOAD", "1")
    with pytest.warns(UserWarning, match=r"(?s)BRIXEL_PARTIAL_LOAD=1: loading anyway.*no training record"):
        load_checkpoint(build(cfg), segformer, map_location="cpu")


def test_checkpoint_under_another_random_backbone_is_refused(toy, tmp_path, dinov3_file):
    from mmengine.runner import load_checkpoint

    cfg, model, ckpt = toy
    other = cfg.copy()
    other.merge_from_dict({"model.backbone.init_seed": 1})
    with pytest.raises(CheckpointMismatchError, match=r"trained with a random init, init_seed=0 .*this model draws a "
                                                      r"random init, init_seed=1"):
        load_checkpoint(build(other), ckpt, map_location="cpu")
    with_file = cfg.copy()
    with_file.merge_from_dict({"model.backbone.weights": str(dinov3_file)})
    with pytest.raises(CheckpointMismatchError, match=r"trained with a random init, init_seed=0 .*this model loads "
                                                      r".*tiny_dinov3.pth"):
        load_checkpoint(build(with_file), ckpt, map_location="cpu")
    # a checkpoint of an older version: its record has no seed, and it does not hold the backbone
    state = model.state_dict()
    record = decode_record(state["backbone._extra_state"])
    for k in ("init_seed", "init_digest"):
        del record["dinov3"][k]
    state["backbone._extra_state"] = encode_record(record)
    old = save_mmengine(state, tmp_path / "old.pth")
    with pytest.raises(CheckpointMismatchError, match=r"random-init DINOv3 whose seed it does not record.*Train again"):
        load_checkpoint(build(cfg), old, map_location="cpu")
    # the frozen backbone's tensors in a checkpoint must be the model's (they were loaded silently before)
    foreign = dict(model.state_dict(), **{f"backbone.featurizer.backbone.{k}": v
                                          for k, v in build(other).backbone.state_dict().items()})
    with pytest.raises(CheckpointMismatchError, match="tensors of the frozen parts that differ from this model's"):
        load_checkpoint(build(cfg), save_mmengine(foreign, tmp_path / "carried.pth"), map_location="cpu")


PREDICT = """
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from mmengine.config import Config
from brixel_plugins.mmseg.inference import load_segmentor, predict
cfg = Config.fromfile(sys.argv[1])
picture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
np.save(sys.argv[3], predict(load_segmentor(cfg, sys.argv[2]), picture))
"""


def test_same_checkpoint_predicts_the_same_in_two_processes(toy, tmp_path):
    """Issue 27.3: the toy checkpoint's maps agreed on 11% of a picture's pixels between two runs."""
    from brixel_plugins.mmseg.inference import load_segmentor, predict

    cfg, _, ckpt = toy
    cfg.dump(str(tmp_path / "config.py"))
    script = tmp_path / "predict.py"
    script.write_text(PREDICT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "config.py"), ckpt, str(tmp_path / "p.npy")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    here = predict(load_segmentor(cfg.copy(), ckpt), picture)
    there = np.load(tmp_path / "p.npy")
    assert len(np.unique(here)) > 1 and np.array_equal(here, there)


# -- Detectron2 ----------------------------------------------------------------------------------
def d2_random(d2_files, seed=0):
    from test_checkpoints import d2_cfg

    cfg = d2_cfg(d2_files, "bilinear")
    cfg.model.backbone.net.update(weights=None, init_seed=seed)
    return cfg


@pytest.fixture(scope="module")
def d2_files(tmp_path_factory, dinov3_file):
    pytest.importorskip("detectron2")
    from brixel_plugins.toydata.instances import write_toy_instances

    root = tmp_path_factory.mktemp("d2")
    return {"dinov3": dinov3_file, "data": str(write_toy_instances(root / "data", num_train=4, num_val=2, size=64))}


def d2_model(cfg):
    from brixel_plugins.d2 import engine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return engine.build_model(cfg).eval()


def d2_outputs(model):
    x = [{"image": torch.arange(3 * 64 * 64, dtype=torch.float32).reshape(3, 64, 64) % 251, "height": 64, "width": 64}]
    with torch.no_grad():
        return model.backbone(model.preprocess_image(x).tensor)


def test_d2_random_backbone_is_left_out_and_reloads_identically(tmp_path, d2_files):
    from brixel_plugins.d2 import FrozenBackboneCheckpointer

    model = d2_model(d2_random(d2_files))
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight)
    FrozenBackboneCheckpointer(model, str(tmp_path)).save("ckpt")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert not any(".featurizer.backbone." in k for k in saved["model"])
    assert saved["external_weights"] == {"backbone.net.featurizer.backbone": "random init, init_seed=0"}
    again = d2_model(d2_random(d2_files))
    FrozenBackboneCheckpointer(again).load(str(tmp_path / "ckpt.pth"))
    a, b = d2_outputs(model), d2_outputs(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(again.roi_heads.box_predictor.cls_score.weight, model.roi_heads.box_predictor.cls_score.weight)
    with pytest.raises(CheckpointMismatchError, match=r"init_seed=0 .*this model draws a random init, init_seed=1"):
        FrozenBackboneCheckpointer(d2_model(d2_random(d2_files, seed=1))).load(str(tmp_path / "ckpt.pth"))


def test_d2_old_checkpoint_holding_the_random_backbone(tmp_path, d2_files):
    """Checkpoints of older versions held a random-init DINOv3 and recorded no seed: equal to the
    model's draw they load (the tensors are ignored); another draw is refused."""
    from detectron2.checkpoint import DetectionCheckpointer

    from brixel_plugins.d2 import FrozenBackboneCheckpointer

    def old_checkpoint(seed, name):
        model = d2_model(d2_random(d2_files, seed))
        state = model.state_dict()
        # what those versions wrote: the DINOv3 tensors too (state_dict() now leaves them out)
        state.update(model.backbone.net.featurizer.backbone.state_dict(prefix="backbone.net.featurizer.backbone."))
        record = decode_record(state["backbone.net._extra_state"])
        for k in ("init_seed", "init_digest"):
            del record["dinov3"][k]
        state["backbone.net._extra_state"] = encode_record(record)
        torch.save({"model": state}, tmp_path / name)
        return str(tmp_path / name)

    same, other = old_checkpoint(0, "same.pth"), old_checkpoint(1, "other.pth")
    FrozenBackboneCheckpointer(d2_model(d2_random(d2_files))).load(same)
    DetectionCheckpointer(d2_model(d2_random(d2_files))).load(same)
    differ = r"(?s)other.pth does not fit.*frozen parts that differ from this model's \(random init, init_seed=0"
    with pytest.raises(CheckpointMismatchError, match=differ):
        FrozenBackboneCheckpointer(d2_model(d2_random(d2_files))).load(other)


def test_d2_head_only_checkpoint_is_refused_by_both_checkpointers(tmp_path, d2_files):
    from detectron2.checkpoint import DetectionCheckpointer

    from brixel_plugins.d2 import FrozenBackboneCheckpointer

    model = d2_model(d2_random(d2_files))
    torch.save({"model": {k: v for k, v in model.state_dict().items() if k.startswith("roi_heads.")}},
               tmp_path / "heads.pth")
    for checkpointer in (FrozenBackboneCheckpointer, DetectionCheckpointer):
        with pytest.raises(CheckpointMismatchError, match=r"heads.pth does not fit this model \(model.backbone.net\)"
                                                          r":\n  - it holds no training record"):
            checkpointer(d2_model(d2_random(d2_files))).load(str(tmp_path / "heads.pth"))
    # our checkpoints load with detectron2's stock checkpointer too (the record keeps its shape)
    FrozenBackboneCheckpointer(model, str(tmp_path)).save("ours")
    DetectionCheckpointer(d2_model(d2_random(d2_files))).load(str(tmp_path / "ours.pth"))


def test_record_tensor_has_one_shape_for_records_of_other_lengths():
    """fvcore's shape check (detectron2's stock checkpointer) drops a tensor whose shape differs from
    the model's: records of other lengths (other paths) must keep one shape."""
    short = {"format": RECORD_FORMAT, "path": "/a"}
    long = {"format": RECORD_FORMAT, "path": "/a" * 500}
    assert encode_record(short).shape == encode_record(long).shape
    assert decode_record(encode_record(long)) == long


def test_d2_export_of_a_random_backbone_rebuilds_it_exactly(tmp_path, d2_files):
    """Issue 27.3: the export dropped the random DINOv3 the d2 checkpoint held (p2 differed by up to 6)."""
    from brixel_plugins.d2 import FrozenBackboneCheckpointer
    from brixel_plugins.d2.export import export_checkpoint
    from brixel_plugins.files.export import load_exported_model

    model = d2_model(d2_random(d2_files))
    FrozenBackboneCheckpointer(model, str(tmp_path)).save("ckpt")
    config = ROOT / "configs" / "d2" / "toy" / "mask_rcnn_dinov3_vits16_bilinear_toy.py"
    opts = ["model.backbone.net.overrides={" + ",".join(f"{k}:{v}" for k, v in TINY.items() if k != "arch") + "}",
            "model.backbone.square_pad=64"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exported, _ = load_exported_model(export_checkpoint(config, tmp_path / "ckpt.pth", tmp_path / "m.safetensors",
                                                            opts=opts))
    a, b = d2_outputs(model), d2_outputs(exported)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same seed drawing other values (another torch or timm) is refused, not silently rebuilt:
    # a file whose recorded draw differs, sealed anew as a forger (or another version) would write it
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from brixel_plugins.backbones.weights import WeightFileError
    from brixel_plugins.files.export import model_digest

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        tensors, raw = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta = json.loads(raw["model"])
    meta["record"]["dinov3"]["init_digest"] = "0" * 64
    raw["model"] = json.dumps(meta, sort_keys=True)
    raw["digest"] = model_digest(raw, tensors)
    save_file(tensors, str(tmp_path / "other_draw.safetensors"), metadata=raw)
    with pytest.raises(WeightFileError, match="another DINOv3.*same seed drew other values"):
        load_exported_model(tmp_path / "other_draw.safetensors")
