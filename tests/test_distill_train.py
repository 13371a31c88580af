"""Few-iteration distillation runs (tiny DINOv3, tiny images) through mmengine's Runner: every
method, exact kill-and-resume, export/import round trip and refusal, the frozen backbone."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from mmengine.config import Config
from mmengine.hooks import Hook

from brixel_plugins.backbones.weights import WeightFileError
from brixel_plugins.distill.runner import DistillRunner
from brixel_plugins.files.upsampler_file import load_upsampler, read_upsampler_file

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(TINY, autocast=None)

# method -> (config, teacher size, student size)
METHODS = {
    "brixel": ("brixel_vits16.py", 64, 16),
    "lift": ("lift_vits16.py", 64, 32),
    "featsharp": ("featsharp_vits16.py", 64, 32),
    "jbu": ("jbu_vits16.py", 64, 32),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """8 small real photos (scikit-image) in nested folders, plus one unreadable file."""

    from brixel_plugins.images import load_rgb, skimage_photo_files

    root = tmp_path_factory.mktemp("photos")
    for i, f in enumerate(skimage_photo_files()[:8]):
        sub = root / ("x" if i % 2 else "") / ("y" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        im = load_rgb(f)
        im.thumbnail((96, 96))
        im.save(sub / f"p{i}.png")
    (root / "x" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def tiny_cfg(method: str, root: Path, work_dir: Path, max_iters: int = 3, ckpt_interval: int = 2,
             val_interval: int = 100, batch: int = 2, **extra) -> Config:
    name, teacher, student = METHODS[method]
    cfg = Config.fromfile(str(ROOT / "configs" / "distill" / name))
    opts = {
        "model.backbone": TINY_BACKBONE,
        "model.teacher_size": teacher,
        "model.student_size": student,
        "train_dataloader.batch_size": batch,
        "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "train_dataloader.dataset.root": str(root),
        "train_dataloader.dataset.size": teacher,
        "train_dataloader.dataset.num_val": 2,
        "val_dataloader.batch_size": 2,
        "val_dataloader.num_workers": 0,
        "val_dataloader.dataset.root": str(root),
        "val_dataloader.dataset.size": teacher,
        "val_dataloader.dataset.num_val": 2,
        "train_cfg": dict(_delete_=True, type="DistillLoop", max_iters=max_iters, val_interval=val_interval),
        "default_hooks.checkpoint.interval": ckpt_interval,
        "default_hooks.logger.interval": 1,
        "visualizer.vis_backends": [dict(type="LocalVisBackend")],
        "env_cfg.dist_cfg.backend": "gloo",
        "log_level": "WARNING",
    }
    if method in ("featsharp", "jbu"):
        opts["custom_hooks"] = [dict(type="PhiSStatsHook", num_batches=2), dict(type="ExportUpsamplerHook")]
        opts["model.objective.num_jitters"] = 2
    if method == "brixel":
        opts["param_scheduler"] = [dict(type="ConstantLR", factor=0.1, by_epoch=True, begin=0, end=1,
                                        convert_to_iter_based=True)]
    opts.update(extra)
    cfg.merge_from_dict(opts)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f"t{uuid.uuid4().hex[:8]}"  # one MessageHub/logger per runner in this process
    return cfg


class RecordLosses(Hook):
    priority = "LOWEST"

    def __init__(self):
        self.losses = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses[runner.iter] = {k: float(v.detach()) for k, v in outputs.items()}


class Crash(Exception):
    pass


class CrashAfter(Hook):
    """Dies like a killed job right after iteration ``n`` (its checkpoint already written)."""

    priority = "LOWEST"

    def __init__(self, n):
        self.n = n

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.n:
            raise Crash()


def run(cfg, *hooks):
    runner = DistillRunner.from_cfg(cfg)
    for h in hooks:
        runner.register_hook(h)
    runner.train()
    return runner


def upsampler_state(runner):
    return {k: v.detach().clone() for k, v in runner.model.upsampler.state_dict().items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_few_iterations_train_and_export(method, photos, tmp_path):
    rec = RecordLosses()
    cfg = tiny_cfg(method, photos, tmp_path, max_iters=3, val_interval=3)
    runner = run(cfg, rec)
    model = runner.model
    # only the trainable modules are optimised: no backbone parameter in any param group
    opt_params = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in model.upsampler.parameters() if p.requires_grad} <= opt_params
    assert all(not p.requires_grad for p in model.backbone.parameters()) and not model.backbone.training
    assert sorted(rec.losses) == [0, 1, 2] and all(np.isfinite(v["loss"]) for v in rec.losses.values())

    # exported weights: best (by val loss) and last, upsampler only, with metadata
    for name in ("best_upsampler.safetensors", "upsampler.safetensors"):
        assert (tmp_path / name).is_file()
    tensors, meta = read_upsampler_file(tmp_path / "upsampler.safetensors")
    exported = model.upsampler.for_export()  # FeatSharp: its spectral reparametrisation baked
    assert set(tensors) == set(exported.state_dict())
    extra = meta["extra"]
    teacher, student = METHODS[method][1:]
    assert meta["method"] == method and extra["backbone"] == "vits16" and extra["factor"] == model.upsampler.factor
    assert extra["student_resolution"] == student
    assert extra["teacher_resolution"] == student * model.upsampler.factor
    assert extra["train_images"] == 6  # 8 photos + 1 broken file, 2 held out, the broken one not counted
    assert {"loss", "upsampler/cosine", "bilinear/fidelity"} <= set(extra["val_metrics"])
    assert "package_version" in extra
    # round trip: the file rebuilds the same upsampler for the same backbone
    up = load_upsampler(tmp_path / "upsampler.safetensors", model.backbone.spec, method)
    for k, v in exported.state_dict().items():
        assert torch.equal(up.state_dict()[k], v.cpu()), k
    hist = json.loads((tmp_path / "val_metrics.json").read_text())
    assert hist[-1]["iteration"] == 3 and hist[-1]["num_images"] == 2


def test_export_refuses_wrong_backbone_and_method(photos, tmp_path):
    from brixel_plugins.backbones.dinov3 import BackboneSpec

    cfg = tiny_cfg("lift", photos, tmp_path, max_iters=1, val_interval=1)
    runner = run(cfg)
    path = tmp_path / "upsampler.safetensors"
    spec = runner.model.backbone.spec
    other = BackboneSpec("vitb16", 768, 12, 12)
    with pytest.raises(WeightFileError, match="embed_dim=64.*embed_dim=768"):
        load_upsampler(path, other, "lift")
    with pytest.raises(WeightFileError, match="'lift' upsampler, but 'brixel'"):
        load_upsampler(path, spec, "brixel")


@pytest.mark.parametrize("method", ["brixel", "featsharp"])
def test_kill_and_resume_continues_exactly(method, photos, tmp_path):
    """4 iterations straight vs 2 iterations, a crash, and --resume: same losses, same weights.
    6 training images / batch 2 = 3 batches per epoch, so the resume point (2) lies inside an
    epoch and the run crosses into the next one (BRIXEL: lr steps up after epoch 1; drop-path on;
    FeatSharp: random jitters and dropout, PHI-S statistics, and its warm-up gradient clip ending
    at step 3, after the resume point, so a step count restarted at 0 would clip step 3 wrongly)."""
    extra = {"optim_wrapper.warmup_steps": 3} if method == "featsharp" else {}
    straight = RecordLosses()
    a = run(tiny_cfg(method, photos, tmp_path / "a", max_iters=5, ckpt_interval=2, val_interval=3, **extra),
            straight)
    with pytest.raises(Crash):
        run(tiny_cfg(method, photos, tmp_path / "b", max_iters=5, ckpt_interval=2, val_interval=3, **extra),
            CrashAfter(3))
    assert (tmp_path / "b" / "iter_2.pth").is_file() and not (tmp_path / "b" / "iter_4.pth").exists()
    resumed = RecordLosses()
    b = run(tiny_cfg(method, photos, tmp_path / "b", max_iters=5, ckpt_interval=2, val_interval=3,
                     resume=True, **extra), resumed)
    assert sorted(resumed.losses) == [2, 3, 4]
    for i in (2, 3, 4):
        assert resumed.losses[i] == straight.losses[i], (i, resumed.losses[i], straight.losses[i])
    sa, sb = upsampler_state(a), upsampler_state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    la = json.loads((tmp_path / "a" / "val_metrics.json").read_text())
    lb = json.loads((tmp_path / "b" / "val_metrics.json").read_text())
    assert la == lb


def test_checkpoint_loader_refuses_foreign_globals(tmp_path):
    from brixel_plugins.engine import trusted_checkpoint_globals

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Path("/etc")}, path)  # a pathlib object: not something we allow
    with pytest.raises(RuntimeError, match="pathlib"):
        with trusted_checkpoint_globals(str(path)):
            pass
