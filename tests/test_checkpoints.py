"""Checkpoints: safe to read, readable by the frameworks' stock tools, self-describing (a checkpoint
of another model is refused), portable (weight files found by one lookup rule), exported as one file."""
from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_DIMS, make_tiny_backbone

from brixel_plugins.backbones.weights import WeightFileError, file_sha256
from brixel_plugins.files.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    restricted_pickle_loads,
    state_dict_problems,
)
from brixel_plugins.files.lookup import WEIGHTS_DIR_ENV, config_folder, find_weight_file
from brixel_plugins.files.upsampler_file import save_upsampler
from brixel_plugins.upsamplers import build_upsampler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """A tiny DINOv3 file (timm layout) and a LiFT and a BRIXEL export for it, in one folder."""
    root = tmp_path_factory.mktemp("weights")
    backbone = make_tiny_backbone()
    torch.save(backbone.model.state_dict(), root / "tiny_dinov3.pth")
    files = {"dir": root, "dinov3": root / "tiny_dinov3.pth"}
    for method in ("lift", "brixel"):
        torch.manual_seed(0)
        files[method] = save_upsampler(root / f"{method}.safetensors",
                                       build_upsampler(dict(type=method), backbone.spec))
    return files


# -- the lookup rule -----------------------------------------------------------------------------
def test_lookup_order_and_errors(tmp_path, monkeypatch, weight_files):
    a, b, c = (tmp_path / n for n in ("config_dir", "weights_dir", "cwd"))
    for folder in (a, b, c):
        (folder / "sub").mkdir(parents=True)
    data = weight_files["dinov3"].read_bytes()
    for folder in (a, b, c):
        (folder / "sub" / "w.pth").write_bytes(data)
    monkeypatch.chdir(c)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(b))
    with config_folder(a / "config.py"):
        assert find_weight_file("sub/w.pth", "k") == str(a / "sub" / "w.pth")
    assert find_weight_file("sub/w.pth", "k") == str(b / "sub" / "w.pth")  # no config: the env folder
    # a recorded absolute path from another machine: its file name in the folders
    assert find_weight_file("/elsewhere/w.pth", "k", config_dir=a / "sub") == str(a / "sub" / "w.pth")
    monkeypatch.delenv(WEIGHTS_DIR_ENV)
    assert find_weight_file("sub/w.pth", "k") == str(c / "sub" / "w.pth")
    with pytest.raises(WeightFileError, match=r"weight file not found: nope\.pth \(set by model\.backbone\.weights\)"):
        find_weight_file("nope.pth", "model.backbone.weights")
    sha = file_sha256(weight_files["dinov3"])
    assert find_weight_file("sub/w.pth", "k", sha256=sha[:8]) == str(c / "sub" / "w.pth")
    (c / "sub" / "w.pth").write_bytes(data + b"x")  # changed bytes: passed over, then the clear error
    with pytest.raises(WeightFileError, match=rf"other bytes than recorded.*expected sha256 {sha}"):
        find_weight_file("sub/w.pth", "model.backbone.weights", sha256=sha)


def test_missing_file_with_hash_suffix_is_weight_file_not_found(tmp_path):
    from brixel_plugins.backbones import FrozenDINOv3

    with pytest.raises(WeightFileError, match="weight file not found"):
        FrozenDINOv3("vits16", tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", **TINY_DIMS)


# -- safe reading --------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating the marker file proves the payload ran


def test_restricted_unpickler_reads_arrays_and_refuses_code(tmp_path):
    data = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)}, "__author__": "x"}
    back = restricted_pickle_loads(pickle.dumps(data))
    assert np.array_equal(back["model"]["w"], data["model"]["w"]) and back["model"]["n"] == 3
    marker = tmp_path / "marker"
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        restricted_pickle_loads(pickle.dumps({"model": _Payload(str(marker))}))
    assert not marker.exists()


def _py_files():
    for folder in ("brixel_plugins", "tools", "configs"):
        yield from sorted((ROOT / folder).rglob("*.py"))


# Reviewed exceptions: (file, the exact argument that makes the load safe, the test that proves it).
# The authors' JAFAR/LoftUp training files hold an omegaconf config beside the weights, which
# weights_only refuses; their reader's unpickler builds tensors and plain containers only and turns
# every other global into an inert stand-in, never importing or calling it.
REVIEWED_LOADS = [("brixel_plugins/upsamplers/release_files.py", "pickle_module=_TENSORS_ONLY",
                   "tests/test_jafar.py::test_reading_an_authors_file_builds_nothing_but_tensors_and_plain_data")]


def test_no_unsafe_loads_in_package_tools_or_configs():
    """Every torch.load passes weights_only=True, or is a reviewed exception above with its restricted
    unpickler and a test of it; pickle is read only by the restricted unpickler. The loads inside
    mmengine, fvcore and detectron2 run with torch's weights_only default, which setup.py's
    torch>=2.6 guarantees."""
    reviewed = {path: arg for path, arg, _ in REVIEWED_LOADS}
    for _, _, test in REVIEWED_LOADS:
        test_file, name = test.split("::")
        assert f"def {name}(" in (ROOT / test_file).read_text(), f"the reviewed exception's test {test} is gone"
    bad = []
    for path in _py_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            safe_arg = reviewed.get(str(path.relative_to(ROOT)))
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code \
                    and not (safe_arg and safe_arg in code):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
            if re.search(r"\b(pickle|cloudpickle|dill|joblib)\.loads?\(|yaml\.unsafe_load"
                         r"|np\.load\(.*allow_pickle=True", code):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
    setup = (ROOT / "setup.py").read_text()
    floor = re.search(r'"torch>=(\d+)\.(\d+)', setup)
    assert floor and (int(floor.group(1)), int(floor.group(2))) >= (2, 6), "torch.load's weights_only default"


def test_state_dict_problems_names_both_shapes():
    model = {"head.conv_seg.weight": torch.zeros(3, 8, 1, 1), "head.bn.weight": torch.zeros(8)}
    ckpt = {"head.conv_seg.weight": torch.zeros(5, 8, 1, 1), "head.extra": torch.zeros(1)}
    problems = state_dict_problems(model, ckpt)
    assert any("(5, 8, 1, 1) in the checkpoint, (3, 8, 1, 1) in this model" in p for p in problems)
    assert any("head.bn.weight" in p for p in problems) and any("head.extra" in p for p in problems)


def test_export_tool_tells_the_frameworks_apart():
    import importlib.util

    spec = importlib.util.spec_from_file_location("brixel_tool_export_model", ROOT / "tools" / "export_model.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for framework, lazy in (("d2", True), ("mmseg", False)):
        configs = [p for p in (ROOT / "configs" / framework).rglob("*.py")
                   if "_base_" not in p.parts and "common" not in p.parts]
        assert configs and all(tool.is_lazyconfig(str(p)) == lazy for p in configs), framework


# -- MMSegmentation ------------------------------------------------------------------------------
mmseg = pytest.importorskip("mmseg") if os.environ.get("BRIXEL_REQUIRE_STACK") != "1" else __import__("mmseg")
TOY = ROOT / "configs" / "mmseg" / "linear" / "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"
STOCK_TOOLS = Path(mmseg.__file__).parent / ".mim" / "tools"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    return str(write_toy_segmentation(tmp_path_factory.mktemp("toy") / "shapes", num_train=4, num_val=2, size=64))


def toy_options(toy_root, **backbone):
    opts = [f"model.backbone.{k}={v}" for k, v in {**TINY_DIMS, **backbone}.items()] + [
        f"model.decode_head.in_channels={TINY['embed_dim']}", "train_dataloader.batch_size=2",
        "val_dataloader.batch_size=2", "default_hooks.logger.interval=1"]
    return opts + [f"{split}_dataloader.dataset.{k}={v}" for split in ("train", "val", "test")
                   for k, v in (("data_root", toy_root), ("generate", None))]


def toy_cfg(toy_root, work_dir, iters=2, **backbone):
    from mmengine.config import Config, DictAction

    cfg = Config.fromfile(str(TOY))
    action = DictAction(option_strings=[], dest="x")
    ns = type("NS", (), {})()
    action(None, ns, toy_options(toy_root, **backbone))
    cfg.merge_from_dict(ns.x)
    cfg.merge_from_dict({"train_cfg.max_iters": iters, "train_cfg.val_interval": iters,
                         "default_hooks.checkpoint.interval": iters})
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f"test_{uuid.uuid4().hex[:8]}"
    return cfg


def run(args, cwd, env=None):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    return r.returncode, r.stdout + r.stderr


def test_stock_mmseg_train_then_init_model_and_stock_test(tmp_path, toy_root, monkeypatch):
    """mmseg's own tools/train.py writes a checkpoint (config's custom_imports do the registration)
    that mmseg's init_model + inference_model and mmseg's own tools/test.py read with torch's
    weights_only default, from another working directory."""
    work = tmp_path / "work"
    code, log = run([STOCK_TOOLS / "train.py", TOY, "--work-dir", work, "--cfg-options", "train_cfg.max_iters=2",
                     "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2", *toy_options(toy_root)],
                    cwd=ROOT)
    assert code == 0, log[-3000:]
    ckpt = work / "iter_2.pth"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []  # tensors and plain data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from mmengine.config import Config
    from mmseg.apis import inference_model, init_model

    cfg = toy_cfg(toy_root, work)
    model = init_model(cfg, str(ckpt), device="cpu")
    picture = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    result = inference_model(model, picture)
    assert tuple(result.pred_sem_seg.shape) == (400, 600)
    assert isinstance(cfg, Config)
    from mmseg.apis import MMSegInferencer

    inferencer = MMSegInferencer(model=toy_cfg(toy_root, work), weights=str(ckpt), device="cpu")
    assert inferencer(picture)["predictions"].shape == (400, 600)
    code, log = run([STOCK_TOOLS / "test.py", TOY, ckpt, "--work-dir", tmp_path / "test", "--cfg-options",
                     *toy_options(toy_root)], cwd=elsewhere)
    assert code == 0 and re.search(r"mIoU: \d", log), log[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_root):
    """A 2-iteration run of the toy config on the tiny DINOv3 file + bilinear, and its checkpoint."""
    from mmengine.registry import RUNNERS

    work = tmp_path_factory.mktemp("trained")
    cfg = toy_cfg(toy_root, work)
    cfg.merge_from_dict({"default_hooks.checkpoint.save_best": "mIoU"})
    RUNNERS.build(cfg).train()
    return cfg, work


def build(cfg):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(cfg.model)


def test_mmseg_checkpoint_of_another_model_is_refused(trained, tmp_path, monkeypatch, weight_files):
    from mmengine.registry import RUNNERS
    from mmengine.runner import load_checkpoint

    cfg, work = trained
    ckpt = str(work / "iter_2.pth")
    # issue 21.2: the 5-class checkpoint under num_classes=3 (tools/test.py's SafeRunner)
    three = cfg.copy()
    three.merge_from_dict({"model.decode_head.num_classes": 3, "load_from": ckpt})
    three.work_dir = str(tmp_path / "three")
    runner = RUNNERS.build(three)
    with pytest.raises(CheckpointMismatchError, match=r"conv_seg.weight: shape \(5, 64, 1, 1\) in the checkpoint, "
                                                      r"\(3, 64, 1, 1\) in this model"):
        runner.load_checkpoint(ckpt)
    # the bilinear checkpoint under a BRIXEL upsampler, through mmengine's stock loader (init_model's)
    brixel = cfg.copy()
    brixel.model.backbone.upsampler = dict(type="brixel", weights=str(weight_files["brixel"]))
    with pytest.raises(CheckpointMismatchError, match=r"upsampler: the checkpoint was trained with bilinear "
                                                      r"\{\"factor\": 4, .*\}; this model has brixel"):
        load_checkpoint(build(brixel), ckpt, map_location="cpu")
    # a partial load, asked for explicitly: loud, and it loads
    monkeypatch.setenv("BRIXEL_PARTIAL_LOAD", "1")
    with pytest.warns(UserWarning, match="BRIXEL_PARTIAL_LOAD=1: loading anyway"):
        load_checkpoint(build(brixel), ckpt, map_location="cpu")


def test_resume_removes_best_checkpoints_of_the_abandoned_run(trained, tmp_path, toy_root):
    from mmengine.registry import RUNNERS

    cfg, work = trained
    run_dir = tmp_path / "run"
    shutil.copytree(work, run_dir)
    best = sorted(run_dir.glob("best_mIoU_iter_*.pth"))
    assert [p.name for p in best] == ["best_mIoU_iter_2.pth"]
    stale = run_dir / "best_mIoU_iter_9.pth"  # written after iter_2 by a run that was then abandoned
    shutil.copy(best[0], stale)
    (run_dir / "last_checkpoint").write_text(str(run_dir / "iter_2.pth"))
    again = toy_cfg(toy_root, run_dir, iters=3)
    again.merge_from_dict({"default_hooks.checkpoint.save_best": "mIoU", "train_cfg.val_begin": 100,
                           "resume": True})
    RUNNERS.build(again).train()
    assert not stale.exists() and best[0].exists()


def test_mmseg_checkpoint_moves_with_its_weight_files(tmp_path, monkeypatch, weight_files, toy_root):
    """Trained with the tiny DINOv3 file and a LiFT export; copied with both to another folder, the
    checkpoint loads there by the lookup rule; a missing or changed file gives the clear error."""
    from mmengine.runner import load_checkpoint

    here = tmp_path / "here"
    shutil.copytree(weight_files["dir"], here)
    monkeypatch.chdir(here)
    cfg = toy_cfg(toy_root, tmp_path / "w", weights="tiny_dinov3.pth")
    cfg.model.backbone.upsampler = dict(type="lift", weights="lift.safetensors")
    model = build(cfg)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, here / "ckpt.pth")
    record = model.state_dict()["backbone._extra_state"]
    assert record.dtype == torch.uint8  # the training record travels in every state dict

    there = tmp_path / "there"
    there.mkdir()
    for name in ("ckpt.pth", "tiny_dinov3.pth", "lift.safetensors"):
        shutil.move(str(here / name), there / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(there))
    load_checkpoint(build(cfg), str(there / "ckpt.pth"), map_location="cpu", strict=True)

    (there / "tiny_dinov3.pth").rename(there / "gone.pth")
    with pytest.raises(WeightFileError,
                       match=r"weight file not found: tiny_dinov3.pth \(set by model.backbone.weights\)"):
        build(cfg)
    other = make_tiny_backbone(seed=1)  # another DINOv3 of the same shape under the same name
    torch.save(other.model.state_dict(), there / "tiny_dinov3.pth")
    with pytest.raises(CheckpointMismatchError, match="DINOv3 weights: the checkpoint was trained with"):
        load_checkpoint(build(cfg), str(there / "ckpt.pth"), map_location="cpu")


def test_mmseg_export_loads_elsewhere_and_predicts_the_same(trained, tmp_path, monkeypatch, weight_files, toy_root):
    from brixel_plugins.files.export import load_exported_model

    monkeypatch.chdir(weight_files["dir"])
    cfg = toy_cfg(toy_root, tmp_path / "w", weights="tiny_dinov3.pth")
    cfg.model.backbone.upsampler = dict(type="lift", weights="lift.safetensors")
    cfg.dump(str(tmp_path / "config.py"))
    model = build(cfg)
    torch.nn.init.normal_(model.decode_head.conv_seg.weight)
    meta = {"dataset_meta": {"classes": list("abcde"), "palette": [[i, i, i] for i in range(5)]}}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp_path / "ckpt.pth")
    code, log = run([ROOT / "tools" / "export_model.py", tmp_path / "config.py", tmp_path / "ckpt.pth",
                     tmp_path / "model.safetensors"], cwd=weight_files["dir"])
    assert code == 0, log[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(weight_files["dinov3"], elsewhere / "tiny_dinov3.pth")
    monkeypatch.chdir(elsewhere)
    exported = load_exported_model(tmp_path / "model.safetensors")
    assert exported.dataset_meta["classes"] == list("abcde")
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(exported(x, mode="tensor"), model.eval()(x, mode="tensor"), atol=1e-5)
    other = make_tiny_backbone(seed=1)
    torch.save(other.model.state_dict(), elsewhere / "tiny_dinov3.pth")
    with pytest.raises(WeightFileError, match=r"other bytes than recorded.*model.backbone.weights"):
        load_exported_model(tmp_path / "model.safetensors")


# -- Detectron2 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def d2_files(tmp_path_factory, weight_files):
    pytest.importorskip("detectron2")
    from brixel_plugins.toydata.instances import write_toy_instances

    root = tmp_path_factory.mktemp("d2")
    return {**weight_files, "data": str(write_toy_instances(root / "data", num_train=4, num_val=2, size=64))}


def d2_cfg(files, base, output_dir="", upsampler=None, max_iter=2):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(ROOT / "configs" / "d2" / "toy" / f"mask_rcnn_dinov3_vits16_{base}_toy.py"))
    net = cfg.model.backbone.net
    net.update(weights=str(files["dinov3"]), overrides={k: v for k, v in TINY.items() if k != "arch"})
    if upsampler:
        net.update(upsampler=dict(type=upsampler, weights=str(files[upsampler])))
    data = dict(root=files["data"], num_train=4, num_val=2, size=64)
    cfg.dataloader.train.dataset.names.update(data)
    cfg.dataloader.test.dataset.names.update(data)
    cfg.dataloader.train.total_batch_size = 2
    cfg.model.backbone.square_pad = 64
    cfg.model.proposal_generator.post_nms_topk = (32, 16)
    cfg.model.roi_heads.batch_size_per_image = 16
    cfg.train.update(device="cpu", max_iter=max_iter, eval_period=0, output_dir=str(output_dir),
                     checkpointer=dict(period=1, max_to_keep=5), log_period=1)
    del cfg.dataloader.evaluator
    return cfg


def test_d2_pkl_payload_does_not_run(tmp_path, d2_files):
    from brixel_plugins.d2 import FrozenBackboneCheckpointer, engine

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": _Payload(str(marker)), "__author__": "x"}))
    model = engine.build_model(d2_cfg(d2_files, "bilinear"))
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        FrozenBackboneCheckpointer(model).load(str(evil))
    assert not marker.exists()
    # a DINOv3 file passed as the detector checkpoint: refused with the key that takes it
    with pytest.raises(CheckpointError, match=r"DINOv3 weight file.*model\.backbone\.net\.weights"):
        FrozenBackboneCheckpointer(model).load(str(d2_files["dinov3"]))


def test_d2_checkpoint_of_another_model_is_refused(tmp_path, d2_files, monkeypatch):
    """Issue 21.2's detector cases: a bilinear checkpoint under the BRIXEL config, a checkpoint of the
    ``none`` config, another num_classes."""
    from brixel_plugins.d2 import FrozenBackboneCheckpointer, engine

    def saved(cfg, name):
        FrozenBackboneCheckpointer(engine.build_model(cfg), str(tmp_path)).save(name)
        return str(tmp_path / f"{name}.pth")

    bilinear = saved(d2_cfg(d2_files, "bilinear"), "bilinear")
    none = saved(d2_cfg(d2_files, "none"), "none")
    brixel = engine.build_model(d2_cfg(d2_files, "brixel", upsampler="brixel"))
    with pytest.raises(CheckpointMismatchError, match="upsampler: the checkpoint was trained with bilinear"):
        FrozenBackboneCheckpointer(brixel).load(bilinear)
    with pytest.raises(CheckpointMismatchError, match="the checkpoint was trained with none"):
        FrozenBackboneCheckpointer(brixel).load(none)
    classes = d2_cfg(d2_files, "bilinear")
    classes.model.roi_heads.num_classes = 3
    with pytest.raises(CheckpointMismatchError, match=r"cls_score.weight: shape \(5, \d+\) in the checkpoint, "
                                                      r"\(4, \d+\) in this model"):
        FrozenBackboneCheckpointer(engine.build_model(classes)).load(bilinear)
    FrozenBackboneCheckpointer(engine.build_model(d2_cfg(d2_files, "bilinear"))).load(bilinear)  # its own: fine


def test_d2_max_to_keep_prunes_checkpoints_written_before_a_resume(tmp_path, d2_files):
    from detectron2.utils.env import seed_all_rng

    from brixel_plugins.d2 import engine

    seed_all_rng(0)
    engine.train(d2_cfg(d2_files, "bilinear", tmp_path, max_iter=2))
    assert sorted(p.name for p in tmp_path.glob("model_0*.pth")) == ["model_0000000.pth", "model_0000001.pth"]
    cfg = d2_cfg(d2_files, "bilinear", tmp_path, max_iter=3)
    cfg.train.checkpointer = dict(period=1, max_to_keep=1)
    engine.train(cfg, resume=True)
    assert sorted(p.name for p in tmp_path.glob("model_0*.pth")) == ["model_0000002.pth"]


def test_d2_checkpoint_moves_and_exports(tmp_path, d2_files, monkeypatch):
    from brixel_plugins.d2 import FrozenBackboneCheckpointer, engine
    from brixel_plugins.d2.export import export_checkpoint, load_trained
    from brixel_plugins.files.export import load_exported_model

    cfg = d2_cfg(d2_files, "brixel", upsampler="brixel")
    model = engine.build_model(cfg).eval()
    FrozenBackboneCheckpointer(model, str(tmp_path)).save("ckpt")
    there = tmp_path / "there"
    there.mkdir()
    for name, key in (("tiny_dinov3.pth", "dinov3"), ("brixel.safetensors", "brixel")):
        shutil.copy(d2_files[key], there / name)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(there))
    monkeypatch.chdir(tmp_path)
    moved = d2_cfg({**d2_files, "dinov3": "/machine/a/tiny_dinov3.pth", "brixel": "/machine/a/brixel.safetensors"},
                   "brixel", upsampler="brixel")
    again = engine.build_model(moved).eval()
    FrozenBackboneCheckpointer(again).load(str(tmp_path / "ckpt.pth"))
    config = ROOT / "configs" / "d2" / "toy" / "mask_rcnn_dinov3_vits16_brixel_toy.py"
    opts = [f"model.backbone.net.weights={d2_files['dinov3']}",
            f"model.backbone.net.upsampler.weights={d2_files['brixel']}",
            "model.backbone.net.overrides={" + ",".join(f"{k}:{v}" for k, v in TINY.items() if k != "arch") + "}",
            "model.backbone.square_pad=64"]
    out = export_checkpoint(config, tmp_path / "ckpt.pth", tmp_path / "model.safetensors", opts=opts)
    model = load_trained(config, tmp_path / "ckpt.pth", opts)[0]
    exported, ecfg = load_exported_model(out)
    x = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "height": 64, "width": 64}]
    with torch.no_grad():
        a, b = model(x)[0]["instances"], exported(x)[0]["instances"]
    assert len(a) == len(b) and torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4)
    assert list(ecfg.metadata.thing_classes) == ["disc", "square", "triangle", "bar"]
