"""MMSegmentation integration with real mmseg/mmengine and a tiny real DINOv3: every shipped config
builds and runs, short Runner trainings on the toy data for every upsampler, the frozen-backbone
traps (init_weights, optimizer, eval mode, checkpoints), export files, odd image sizes, the tools."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("mmseg", reason="install with the [mmseg] extra (make test does)")

from conftest import TINY, TINY_DIMS, make_tiny_backbone  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS, DefaultScope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

from brixel_plugins.backbones import ARCHS  # noqa: E402
from brixel_plugins.backbones.weights import WeightFileError  # noqa: E402
from brixel_plugins.engine import trusted_checkpoint_globals  # noqa: E402
from brixel_plugins.files.upsampler_file import save_upsampler  # noqa: E402
from brixel_plugins.mmseg import DINOv3Featurizer  # noqa: E402
from brixel_plugins.upsamplers import build_upsampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "mmseg"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.py") if "_base_" not in p.parts)
TOY = CONFIG_DIR / "linear" / "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"
ANYUP_TOY = CONFIG_DIR / "linear" / "linear_dinov3-vits16-anyup_1xb8-60it_toy-shapes-128x128.py"
METHODS = ("none", "bilinear", "lift", "jbu", "featsharp", "brixel")
NEW_METHODS = ("anyup", "jafar", "loftup")  # the configs' matrix has them too; one toy run (AnyUp) below
FROZEN_PREFIX = "backbone.featurizer.backbone."
RECORD = "backbone._extra_state"  # what the backbone was built with, checked at load (not weights)
RAN = set()  # tiny model configs already run by test_every_config_builds_and_runs



@pytest.fixture(scope="module", autouse=True)
def mmseg_scope():
    """mmseg's builders resolve types through mmengine's process-wide default scope, which any
    Runner of another scope (the distillation tests run before these) leaves behind: set it for
    this module (before its module fixtures build anything), as mmseg's own tools do."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_backbone):
    """One export file per trained method for the tiny backbone (what tools/distill.py and
    tools/convert_weights.py write)."""
    folder = tmp_path_factory.mktemp("exports")
    files = {}
    for method in ("lift", "jbu", "featsharp", "brixel", *NEW_METHODS):
        torch.manual_seed(0)
        up = build_upsampler(dict(type=method), tiny_backbone.spec)
        if not up.calibrated:  # FeatSharp's PHI-S statistics
            up.calibrate(tiny_backbone.last_layer_map(torch.randn(2, 3, 64, 64)))
            up.finish_calibration()
        files[method] = str(save_upsampler(folder / f"{method}.safetensors", up))
    return files


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    return str(write_toy_segmentation(tmp_path_factory.mktemp("toy") / "shapes", num_train=8, num_val=4, size=64))


def upsampler_cfg(method, exports):
    if method == "none":
        return None
    if method == "bilinear":
        return dict(type="bilinear", factor=4)
    return dict(type=method, weights=exports[method])


def shrink_widths(node, dim: int, tiny: int) -> None:
    """Every in/out channel count equal to the real DINOv3 width becomes the tiny one."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("in_channels", "out_channels") and v == dim:
                node[k] = tiny
            elif k in ("in_channels", "out_channels") and isinstance(v, (list, tuple)) and set(v) == {dim}:
                node[k] = [tiny] * len(v)
            else:
                shrink_widths(v, dim, tiny)


def make_tiny(cfg: Config, exports) -> Config:
    """The config's model on the tiny DINOv3 (random init), with tiny export files."""
    bb = cfg.model.backbone
    dim = ARCHS[bb.arch].embed_dim
    bb.update(arch="vits16", weights=None, **TINY_DIMS)
    if bb.get("out_indices"):
        bb.out_indices = (1, 2, 3)
    up = bb.get("upsampler")
    if up is not None and up.get("weights"):
        up.weights = exports[up.type]
    shrink_widths(cfg.model, dim, TINY["embed_dim"])
    return cfg


def toy_config(tmp_path, toy_root, exports, method="bilinear", iters=2, config=TOY, **backbone) -> Config:
    cfg = make_tiny(Config.fromfile(config), exports)
    if method is not None:  # None: the config's own upsampler, its file replaced by the tiny export
        cfg.model.backbone.upsampler = upsampler_cfg(method, exports)
    cfg.model.backbone.update(backbone)
    data = dict(data_root=toy_root, generate=None)
    cfg.merge_from_dict({
        "train_dataloader.batch_size": 2, "train_dataloader.dataset": data,
        "val_dataloader.batch_size": 2, "val_dataloader.dataset": data, "test_dataloader.dataset": data,
        "train_cfg.max_iters": iters, "train_cfg.val_interval": iters,
        "default_hooks.logger.interval": 1, "default_hooks.checkpoint.interval": iters,
        "default_hooks.checkpoint.save_best": None,
    })
    cfg.work_dir = str(tmp_path / "work")
    cfg.experiment_name = f"test_{uuid.uuid4().hex[:8]}"
    return cfg


def snapshot(module: torch.nn.Module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def load_checkpoint_file(path):
    with trusted_checkpoint_globals(str(path)):
        return torch.load(path, map_location="cpu")


# -- configs -------------------------------------------------------------------------------------
def test_config_set_is_complete():
    names = {p.name for p in CONFIGS}
    for arch in ("vits16", "vitb16", "vitl16", "vith16plus"):
        for method in METHODS + NEW_METHODS:
            assert f"linear_dinov3-{arch}-{method}_1xb32-40e_ade20k-256x256.py" in names
    for pattern in ("40k_ade20k-512x512", "cityscapes", "voc12", "upernet", "toy"):
        assert any(pattern in n for n in names), pattern


def test_every_weight_file_a_config_loads_has_a_distillation_config():
    """A cell loading ``work_dirs/<name>/best_upsampler.safetensors`` names the output of
    ``tools/distill.py configs/distill/<name>.py`` (its default work dir): that config must exist."""
    import re

    wanted = {m for p in CONFIGS for m in re.findall(r"work_dirs/([\w.-]+)/best_upsampler\.safetensors", p.read_text())}
    assert wanted, "no config loads distilled weights"
    missing = sorted(n for n in wanted if not (ROOT / "configs" / "distill" / f"{n}.py").is_file())
    assert not missing, missing


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds_and_runs(path, exports):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == "mmseg" and "brixel_plugins.mmseg" in cfg.custom_imports.imports
    bb = cfg.model.backbone
    assert bb.type == "DINOv3Featurizer" and bb.arch in path.name
    if "toy" not in path.name:  # a real run needs real DINOv3 weights of the right size
        assert bb.weights and bb.arch in Path(bb.weights).name
    head = cfg.model.decode_head
    if head.type == "LinearProbeHead":
        assert head.in_channels == ARCHS[bb.arch].embed_dim
    method = "none" if bb.upsampler is None else bb.upsampler.type
    assert re.search(rf"-{method}_", path.name), "the file name names another upsampler"
    tiny = make_tiny(cfg, exports).model
    model = MODELS.build(tiny)
    model.init_weights()
    key = repr(tiny.to_dict())
    if key in RAN:  # at the tiny size the matrix's backbones are one model: run it once
        return
    RAN.add(key)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 48), mode="tensor")
    assert logits.shape[:2] == (1, head.num_classes) and torch.isfinite(logits).all()


# -- training through the Runner -----------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_train_and_validate_every_upsampler(method, tmp_path, toy_root, exports):
    train_frozen_and_validate(toy_config(tmp_path, toy_root, exports, method))


def test_anyup_toy_config_trains_and_validates(tmp_path, toy_root, exports):
    """The toy config of a new upsampler as shipped: AnyUp from its weight file (a tiny stand-in of
    the converted release), frozen, under the linear probe."""
    shipped = Config.fromfile(ANYUP_TOY)
    assert shipped.model.backbone.upsampler == dict(type="anyup", weights="checkpoints/anyup_vits16.safetensors")
    assert shipped.model.backbone.weights is None and shipped.train_cfg.max_iters == 60
    cfg = toy_config(tmp_path, toy_root, exports, method=None, config=ANYUP_TOY)
    runner = train_frozen_and_validate(cfg)
    up = runner.model.backbone.upsampler
    assert up.method == "anyup" and up.factor == 4 and up.weight_file == exports["anyup"]

    # tools/export_model.py's one file: the allow-list admits AnyUp's config, and it predicts the same
    from brixel_plugins.mmseg.export import export_checkpoint
    from brixel_plugins.mmseg.inference import load_segmentor, predict

    config, checkpoint = tmp_path / "anyup_toy.py", Path(cfg.work_dir) / "iter_2.pth"
    cfg.dump(str(config))
    exported = export_checkpoint(config, checkpoint, tmp_path / "anyup_toy.safetensors")
    image = np.random.default_rng(0).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    from_file = load_segmentor(str(exported))
    assert from_file.backbone.upsampler.method == "anyup"
    assert np.array_equal(predict(from_file, image), predict(load_segmentor(str(config), str(checkpoint)), image))


def train_frozen_and_validate(cfg):
    """Train ``cfg`` (the toy, 2 iterations): only the head trains, frozen parts stay in eval mode
    and out of the checkpoint, validation scores."""
    runner = RUNNERS.build(cfg)
    model = runner.model
    featurizer = model.backbone
    dinov3 = snapshot(featurizer.backbone)
    upsampler = snapshot(featurizer.upsampler)
    modes = []  # (part, its training flag, the model's) at every forward
    featurizer.backbone.model.register_forward_pre_hook(
        lambda m, a: modes.append(("dinov3", m.training, model.training)))
    featurizer.upsampler.register_forward_pre_hook(lambda m, a: modes.append(("upsampler", m.training, model.training)))
    runner.train()

    # mmengine's init_weights recursion did not reach timm's Eva, and nothing trained DINOv3
    assert same(dinov3, snapshot(featurizer.backbone))
    assert same(upsampler, snapshot(featurizer.upsampler))  # frozen by default
    assert any(whole for _, _, whole in modes), "no training forward was seen"
    assert not any(part for _, part, _ in modes), "a frozen part ran in training mode"
    trained = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.decode_head.parameters()}
    assert all(not p.requires_grad for p in featurizer.parameters())

    miou = runner.message_hub.get_scalar("val/mIoU").current()
    assert 0.0 <= miou <= 100.0
    state = load_checkpoint_file(Path(cfg.work_dir) / "iter_2.pth")["state_dict"]
    frozen = [k for k in state if k.startswith("backbone.") and k != RECORD]
    assert not frozen, "frozen weights were written to the checkpoint"
    assert any(k.startswith("decode_head.conv_seg") for k in state)
    return runner


def test_init_weights_trap_is_real_and_avoided(tmp_path, toy_root, exports):
    model = MODELS.build(toy_config(tmp_path, toy_root, exports, "brixel").model)
    dinov3 = model.backbone.backbone
    before = snapshot(dinov3)
    model.init_weights()
    assert same(before, snapshot(dinov3))
    dinov3.model.init_weights()  # what mmengine's default recursion would call
    assert not same(before, snapshot(dinov3))


def test_train_upsampler_finetunes_and_is_checkpointed(tmp_path, toy_root, exports):
    cfg = toy_config(tmp_path, toy_root, exports, "lift", train_upsampler=True)
    runner = RUNNERS.build(cfg)
    up = runner.model.backbone.upsampler
    before = snapshot(up)
    modes = []
    up.register_forward_pre_hook(lambda m, a: modes.append((m.training, runner.model.training)))
    runner.train()
    trained = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in up.parameters()} <= trained
    assert not {id(p) for p in runner.model.backbone.backbone.parameters()} & trained
    assert any(part for part, whole in modes if whole)  # BN of the fine-tuned upsampler trains
    assert not same(before, snapshot(up))
    state = load_checkpoint_file(Path(cfg.work_dir) / "iter_2.pth")["state_dict"]
    assert any(k.startswith("backbone.featurizer.upsampler.") for k in state)
    assert not any(k.startswith(FROZEN_PREFIX) for k in state)
    # a fresh model loads the head + upsampler checkpoint strictly; DINOv3 keeps its own weights
    fresh = MODELS.build(cfg.model)
    fresh.load_state_dict(state, strict=True)
    assert same(snapshot(up), snapshot(fresh.backbone.upsampler))


# -- weight files --------------------------------------------------------------------------------
def test_export_files_load_frozen_and_wrong_ones_are_refused(tmp_path, exports):
    torch.manual_seed(0)
    net = DINOv3Featurizer(upsampler=dict(type="brixel", weights=exports["brixel"]), **TINY_DIMS)
    from safetensors.torch import load_file

    assert same(load_file(exports["brixel"]), net.upsampler.state_dict())
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(WeightFileError, match="holds a 'brixel' upsampler, but 'lift'"):
        DINOv3Featurizer(upsampler=dict(type="lift", weights=exports["brixel"]), **TINY_DIMS)
    other = make_tiny_backbone(depth=3)
    path = save_upsampler(tmp_path / "jbu_depth3.safetensors", build_upsampler(dict(type="jbu"), other.spec))
    with pytest.raises(WeightFileError, match="trained for a backbone with .*depth=3"):
        DINOv3Featurizer(upsampler=dict(type="jbu", weights=str(path)), **TINY_DIMS)
    with pytest.raises(ValueError, match="factor=4 in the config, 2 in the file"):
        DINOv3Featurizer(upsampler=dict(type="jbu", weights=exports["jbu"], factor=4), **TINY_DIMS)
    with pytest.raises(WeightFileError, match="not found"):
        DINOv3Featurizer(upsampler=dict(type="jbu", weights=str(tmp_path / "missing.safetensors")), **TINY_DIMS)
    with pytest.raises(ValueError, match="no parameters"):
        DINOv3Featurizer(upsampler=dict(type="bilinear"), train_upsampler=True, **TINY_DIMS)


def test_backbone_returns_dense_map_first_then_layers():
    torch.manual_seed(0)
    net = DINOv3Featurizer(upsampler=dict(type="bilinear", factor=4), out_indices=(1, -1), **TINY_DIMS)
    x = torch.randn(2, 3, 64, 96)
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 24), (2, 64, 4, 6), (2, 64, 4, 6)]
    assert net.out_indices == (1, 3) and net.out_channels == (64, 64, 64)
    last = net.backbone.layers(x, [3])[3]
    assert torch.equal(outs[2], last)
    assert torch.allclose(outs[0], torch.nn.functional.interpolate(last, scale_factor=4, mode="bilinear"))
    plain = DINOv3Featurizer(upsampler=None, **TINY_DIMS)  # no upsampler: the stride-16 map itself
    dense, = plain(x)
    assert torch.equal(dense, plain.backbone.layers(x, [3])[3])


# -- image sizes ---------------------------------------------------------------------------------
def batch(h: int, w: int, classes: int = 5):
    torch.manual_seed(0)
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
    sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w)))
    return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8)], data_samples=[sample])


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_sizes_that_are_not_multiples_of_16_pass_through_padding(mode, tmp_path, toy_root, exports):
    cfg = toy_config(tmp_path, toy_root, exports, "lift")
    if mode == "slide":
        cfg.model.test_cfg = dict(mode="slide", crop_size=(48, 48), stride=(32, 32))
    model = MODELS.build(cfg.model)
    model.init_weights()
    data = model.data_preprocessor(batch(50, 70), training=True)
    assert tuple(data["inputs"].shape[-2:]) == (64, 80)  # padded to the patch size
    losses = model.loss(data["inputs"], data["data_samples"])
    assert torch.isfinite(losses["decode.loss_ce"])
    model.eval()
    with torch.no_grad():
        pred = model.val_step(batch(50, 70))[0]
    assert tuple(pred.pred_sem_seg.shape) == (50, 70)  # padding cropped from the prediction


def test_working_scale_runs_dinov3_smaller_on_any_size():
    torch.manual_seed(0)
    net = DINOv3Featurizer(upsampler=dict(type="bilinear", factor=4), working_scale=0.5, **TINY_DIMS)
    dense, = net(torch.randn(1, 3, 50, 70))
    assert tuple(dense.shape[-2:]) == (8, 8)  # working image 32 x 32 (25 x 35 rounded to patches)


@pytest.mark.parametrize("upsampler", [dict(type="bilinear", factor=4), dict(type="anyup", factor=4)],
                         ids=["bilinear", "anyup"])
def test_output_scale_gives_the_dense_map_at_a_non_integer_scale(upsampler, tmp_path, toy_root, exports):
    """Issue 29.2: a config asks the upsampler for 2.5 x the token grid (or a size); the segmentor
    trains and predicts at the image's size on it."""
    torch.manual_seed(0)
    net = DINOv3Featurizer(upsampler=upsampler, output_scale=2.5, out_indices=(-1,), **TINY_DIMS).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        dense, last = net(x)
    assert tuple(last.shape[-2:]) == (4, 6) and tuple(dense.shape[-2:]) == (10, 15)  # 2.5 x (4, 6), not 4 x
    if upsampler["type"] == "bilinear":
        torch.testing.assert_close(dense, torch.nn.functional.interpolate(last, size=(10, 15), mode="bilinear"),
                                   rtol=0, atol=0)
    sized = DINOv3Featurizer(upsampler=upsampler, output_size=(7, 9), **TINY_DIMS).eval()
    with torch.no_grad():
        assert tuple(sized(x)[0].shape[-2:]) == (7, 9)
    if upsampler["type"] != "bilinear":
        return  # the segmentor around it is the same for every upsampler: built once, with the cheap one
    model = MODELS.build(toy_config(tmp_path, toy_root, exports, "bilinear", output_scale=2.5).model)
    model.init_weights()
    losses = model.loss(*model.data_preprocessor(batch(50, 70), training=True).values())
    assert torch.isfinite(losses["decode.loss_ce"])
    model.eval()
    with torch.no_grad():
        assert tuple(model.val_step(batch(50, 70))[0].pred_sem_seg.shape) == (50, 70)


def test_an_output_scale_a_factor_only_upsampler_cannot_give_is_refused_at_build(exports):
    with pytest.raises(ValueError, match=r"brixel upsamples by its factor 4 only, got output_scale=2.5; use an "
                                         r"upsampler that gives any size for other scales \(.*anyup.*bilinear"):
        DINOv3Featurizer(upsampler=dict(type="brixel", weights=exports["brixel"]), output_scale=2.5, **TINY_DIMS)
    net = DINOv3Featurizer(upsampler=dict(type="brixel", weights=exports["brixel"]), output_scale=4, **TINY_DIMS)
    assert tuple(net(torch.randn(1, 3, 32, 48))[0].shape[-2:]) == (8, 12)  # its own factor is fine


# -- the linear probe head -----------------------------------------------------------------------
def test_linear_probe_head_structure_and_init():
    head = MODELS.build(dict(type="LinearProbeHead", in_channels=64, num_classes=5))
    head.init_weights()
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    assert isinstance(head.bn, torch.nn.BatchNorm2d) and head.conv_seg.kernel_size == (1, 1)
    assert 0.005 < head.conv_seg.weight.std().item() < 0.015 and head.conv_seg.bias.abs().max() == 0
    head.eval()
    x = torch.randn(2, 64, 8, 8)
    manual = head.conv_seg(head.bn(x))
    assert torch.allclose(head([x]), manual)
    concat = MODELS.build(dict(type="LinearProbeHead", in_channels=[64, 64], in_index=[0, 1],
                               input_transform="resize_concat", num_classes=5))
    assert concat.conv_seg.in_channels == 128
    out = concat([torch.randn(1, 64, 16, 16), torch.randn(1, 64, 4, 4)])
    assert tuple(out.shape) == (1, 5, 16, 16)  # the first (dense) map sets the size


# -- the command-line tools ----------------------------------------------------------------------
def run_tool(*args):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def test_resume_and_test_tools(tmp_path, toy_root, exports):
    """tools/train.py --resume continues a run from its newest checkpoint; tools/test.py scores a
    checkpoint that holds only the head (DINOv3 comes from the config, as in training)."""
    cfg = toy_config(tmp_path, toy_root, exports, "bilinear")
    RUNNERS.build(cfg).train()  # 2 iterations: iter_2.pth, the run a kill interrupted
    work = Path(cfg.work_dir)
    tiny = [f"model.backbone.{k}={v}" for k, v in TINY_DIMS.items()] + [
        f"model.decode_head.in_channels={TINY['embed_dim']}", "train_dataloader.batch_size=2",
        "val_dataloader.batch_size=2", "default_hooks.logger.interval=1", "train_cfg.val_interval=100"] + [
        f"{split}_dataloader.dataset.{k}={v}" for split in ("train", "val", "test")
        for k, v in (("data_root", toy_root), ("generate", None))]
    log = run_tool("tools/train.py", TOY, "--work-dir", work, "--resume",
                   "--cfg-options", "train_cfg.max_iters=3", *tiny)
    assert re.search(r"resumed epoch: \d+, iter: 2", log), log[-2000:]
    state = load_checkpoint_file(work / "iter_3.pth")
    assert state["meta"]["iter"] == 3 and not any(k.startswith("backbone.") for k in state["state_dict"] if k != RECORD)
    out = run_tool("tools/test.py", TOY, work / "iter_3.pth", "--work-dir", work, "--cfg-options", *tiny)
    assert re.search(r"'mIoU': \d", out), out[-2000:]
