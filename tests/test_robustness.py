"""Nothing lost, nothing NaN: one test per failure a new user met (tiny real DINOv3, CPU).

Diverging runs stop loudly; a checkpoint write killed half-way leaves a run that resumes;
validation numbers are logged as measured; bad weight files, bad tensors, 16-bit images,
unreadable images and bad CLI arguments all get clear answers.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import register_backend

from brixel_plugins.backbones import FrozenDINOv3
from brixel_plugins.backbones.weights import WeightFileError
from brixel_plugins.common.checks import first_non_finite
from brixel_plugins.common.filesystem import atomic_path
from brixel_plugins.distill.runner import DistillRunner
from brixel_plugins.engine import AtomicLocalBackend, CheckpointError, trusted_checkpoint_globals
from brixel_plugins.files.upsampler_file import load_upsampler, read_upsampler_file, save_upsampler
from brixel_plugins.upsamplers import build_upsampler

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "distill" / "brixel_vits16.py"
TINY = dict(arch="vits16", depth=4, embed_dim=64, num_heads=2)


def tiny_opts(max_iters: int, ckpt_interval: int, val_interval: int) -> dict:
    """Tiny BRIXEL distillation: 64 px teacher, 16 px student, batch 2, no workers."""
    return {
        "model.backbone": dict(TINY, autocast=None), "model.teacher_size": 64, "model.student_size": 16,
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "val_dataloader.batch_size": 2,
        "val_dataloader.num_workers": 0, "train_dataloader.dataset.size": 64, "val_dataloader.dataset.size": 64,
        "train_cfg": dict(_delete_=True, type="DistillLoop", max_iters=max_iters, val_interval=val_interval),
        "default_hooks.checkpoint.interval": ckpt_interval, "default_hooks.logger.interval": 1,
        "env_cfg.dist_cfg.backend": "gloo",
    }


def tiny_cfg(train_root: Path, val_root: Path, work_dir: Path, max_iters=3, ckpt_interval=2, val_interval=100,
             **extra) -> Config:
    cfg = Config.fromfile(str(CONFIG))
    opts = tiny_opts(max_iters, ckpt_interval, val_interval)
    opts.update({"train_dataloader.dataset.root": str(train_root), "val_dataloader.dataset.root": str(train_root),
                 "train_dataloader.dataset.val_root": str(val_root), "val_dataloader.dataset.val_root": str(val_root),
                 "visualizer.vis_backends": [dict(type="LocalVisBackend")], "log_level": "WARNING"})
    opts.update(extra)
    cfg.merge_from_dict(opts)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f"r{uuid.uuid4().hex[:8]}"  # one MessageHub/logger per runner in this process
    return cfg


def log_text(runner) -> str:
    return "".join(p.read_text() for p in Path(runner.log_dir).glob("*.log"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """train/: 5 real photos, a file that is no image, a JPEG cut short; val/: 2 photos."""
    from brixel_plugins.distill.data import skimage_photo_files
    from brixel_plugins.images import load_rgb

    root = tmp_path_factory.mktemp("data")
    train, val = root / "train", root / "val"
    train.mkdir()
    val.mkdir()
    for i, f in enumerate(skimage_photo_files()[:7]):
        im = load_rgb(f)
        im.thumbnail((80, 80))
        im.save((train if i < 5 else val) / f"p{i}.jpg", quality=90)
    (train / "notes.jpg").write_bytes(b"not an image")
    data = (train / "p0.jpg").read_bytes()
    (train / "truncated.jpg").write_bytes(data[: len(data) // 2])  # the header opens, decoding fails
    return train, val


# -- 1. a diverging run -----------------------------------------------------------------------------
def test_diverging_run_exits_nonzero_and_writes_nothing_non_finite(folders, tmp_path):
    train, val = folders
    opts = tiny_opts(max_iters=6, ckpt_interval=1, val_interval=1)
    opts["optim_wrapper.optimizer.lr"] = 1e12
    cli = [f"{k}={v}" for k, v in opts.items() if not isinstance(v, dict)]
    cli += ["train_cfg.max_epochs=None", "train_cfg.max_iters=6", "train_cfg.val_interval=1",
            "model.backbone.depth=4", "model.backbone.embed_dim=64", "model.backbone.num_heads=2",
            # a tolerance forgives only steps the optimizer skipped; plain Adam has written NaNs already
            "default_hooks.non_finite.max_skipped_steps=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("DINOV3_WEIGHTS", None)
    p = subprocess.run([sys.executable, "tools/distill.py", str(CONFIG), "--data-root", str(train),
                        "--val-root", str(val), "--work-dir", str(tmp_path), "--amp", "off", "--cfg-options", *cli],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-3000:]
    m = re.search(r"error: training diverged at iteration (\d+): non-finite loss, term '(loss_\w+)'", out)
    assert m, out[-3000:]
    assert "the weights now hold NaN/Inf" in out and "Traceback" not in out
    diverged = int(m.group(1))
    assert not (tmp_path / "upsampler.safetensors").exists()  # no export of the diverged weights
    for f in tmp_path.glob("*.safetensors"):
        read_upsampler_file(f)  # refuses non-finite tensors
    ckpts = sorted(tmp_path.glob("*.pth"))
    assert ckpts, "the iterations before the divergence were checkpointed"
    for f in ckpts:
        with trusted_checkpoint_globals(str(f)):
            ck = torch.load(str(f), map_location="cpu", weights_only=True)
        assert first_non_finite(ck["state_dict"].items()) is None, f
        assert ck["meta"]["iter"] < diverged
    last = Path((tmp_path / "last_checkpoint").read_text())
    assert last.is_file() and last.name == f"iter_{diverged - 1}.pth"


# -- 2. a checkpoint write killed half-way, max_keep_ckpts=1 ------------------------------------------
class KilledWhileWriting(Exception):
    pass


class DiesWritingIter2(AtomicLocalBackend):
    """Writes half of iter_2.pth to its temporary file and dies there."""

    def put(self, obj: bytes, filepath) -> None:
        if str(filepath).endswith("iter_2.pth"):
            with atomic_path(filepath) as tmp:
                tmp.write_bytes(obj[: len(obj) // 2])
                raise KilledWhileWriting(str(tmp))
        super().put(obj, filepath)


register_backend("test_dies_writing_iter_2", DiesWritingIter2, force=True)


def test_checkpoint_write_killed_midway_still_resumes(folders, tmp_path):
    train, val = folders
    keep_one = {"default_hooks.checkpoint.max_keep_ckpts": 1}
    cfg = tiny_cfg(train, val, tmp_path, max_iters=2, ckpt_interval=1, **keep_one,
                   **{"default_hooks.checkpoint.backend_args": dict(backend="test_dies_writing_iter_2")})
    with pytest.raises(KilledWhileWriting):
        DistillRunner.from_cfg(cfg).train()
    # the old checkpoint is deleted only after the new one is complete
    assert (tmp_path / "iter_1.pth").is_file()
    assert Path((tmp_path / "last_checkpoint").read_text()) == tmp_path / "iter_1.pth"

    # what a kill of a non-atomic writer leaves: a stale temp file, an empty checkpoint named by the pointer
    stale = tmp_path / ".iter_2.pth.k1ll3d00.tmp"
    stale.write_bytes(b"\x50\x4b half a zip")
    (tmp_path / "iter_2.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_2.pth"))

    runner = DistillRunner.from_cfg(tiny_cfg(train, val, tmp_path, max_iters=2, ckpt_interval=1, resume=True,
                                             **keep_one))
    runner.train()
    assert runner.iter == 2
    assert f"skipped checkpoint {tmp_path / 'iter_2.pth'}: empty file (0 bytes)" in log_text(runner)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_2.pth"]  # max_keep_ckpts=1
    with trusted_checkpoint_globals(str(tmp_path / "iter_2.pth")):
        assert torch.load(str(tmp_path / "iter_2.pth"), weights_only=True)["meta"]["iter"] == 2
    # a checkpoint named explicitly (--resume FILE) that cannot be read: a clear error, no fallback
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: empty file"):
        runner.load_checkpoint(str(tmp_path / "empty.pth"))


# -- 3 and 6. one tiny run: validation logging, unreadable images --------------------------------------
@pytest.fixture(scope="module")
def validated_run(folders, tmp_path_factory):
    """3 iterations = one epoch (6 openable training images, batch 2), a validation after each."""
    train, val = folders
    work = tmp_path_factory.mktemp("validated")
    cfg = tiny_cfg(train, val, work, max_iters=3, ckpt_interval=100, val_interval=1, log_level="INFO",
                   **{"default_hooks.checkpoint.save_best": None, "default_hooks.checkpoint.save_last": False},
                   **{"visualizer.vis_backends": [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]})
    runner = DistillRunner.from_cfg(cfg)
    runner.train()
    return runner, work


def test_logged_validation_loss_equals_the_table(validated_run):
    runner, work = validated_run
    table = {h["iteration"]: h["loss"] for h in json.loads((work / "val_metrics.json").read_text())}
    assert sorted(table) == [1, 2, 3] and len(set(table.values())) == 3
    vis = Path(runner.log_dir) / "vis_data"
    scalars = [json.loads(line) for line in (vis / "scalars.json").read_text().splitlines()]
    logged = {s["step"]: s["distill/loss"] for s in scalars if "distill/loss" in s}
    assert logged == pytest.approx(table, rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(vis))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("distill/loss")} == pytest.approx(table, rel=1e-5)
    in_log = [float(v) for v in re.findall(r"Iter\(val\).*?distill/loss: ([-\d.e+]+)", log_text(runner))]
    assert in_log == pytest.approx([table[i] for i in (1, 2, 3)], abs=1e-4)


def test_unreadable_images_not_counted_and_reported_once(validated_run, folders):
    runner, work = validated_run
    train, _ = folders
    lines = log_text(runner).splitlines()
    assert sum(str(train / "notes.jpg") in line for line in lines) == 1  # left out when the dataset is built
    assert sum(str(train / "truncated.jpg") in line for line in lines) == 1  # reported at the end of the epoch
    log = "\n".join(lines)
    assert "training epoch 1: 1 image file(s) could not be decoded" in log
    _, meta = read_upsampler_file(work / "upsampler.safetensors")
    assert meta["extra"]["train_images"] == 5  # the 5 photos: neither broken file counts


# -- 4. bad weight files ---------------------------------------------------------------------------
def test_empty_backbone_weight_file_is_explained(tmp_path):
    empty = tmp_path / "dinov3_vits16.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightFileError, match=r"is empty \(0 bytes\)"):
        FrozenDINOv3(**TINY, weights=empty)


def test_backbone_weight_file_with_a_wrong_shaped_tensor_is_explained(tiny_backbone, tmp_path):
    sd = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    path = tmp_path / "wrong.pth"
    torch.save(sd, path)
    with pytest.raises(WeightFileError, match=r"blocks\.1\.mlp\.fc1\.weight: \(100, 64\) in the file, \(256, 64\)"):
        FrozenDINOv3(**TINY, weights=path)


def _rewrite_metadata(src: Path, dst: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = {**f.metadata(), **changes}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(dst), metadata={k: v for k, v in meta.items() if v is not None})
    return dst


def test_upsampler_file_with_broken_metadata_is_explained(tiny_spec, tmp_path):
    good = save_upsampler(tmp_path / "lift.safetensors", build_upsampler(dict(type="lift"), tiny_spec))
    broken_json = _rewrite_metadata(good, tmp_path / "json.safetensors", config='{"factor": 2,')
    with pytest.raises(WeightFileError, match="metadata entry 'config' is not valid JSON"):
        load_upsampler(broken_json, tiny_spec)
    no_method = _rewrite_metadata(good, tmp_path / "nomethod.safetensors", method=None)
    with pytest.raises(WeightFileError, match="metadata has no 'method'"):
        load_upsampler(no_method, tiny_spec)


def test_upsampler_weights_with_non_finite_values_are_neither_written_nor_loaded(tiny_spec, tmp_path):
    from safetensors.torch import save_file

    up = build_upsampler(dict(type="lift"), tiny_spec)
    good = save_upsampler(tmp_path / "lift.safetensors", up)
    name, param = next(iter(up.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"refusing to write .*{re.escape(name)} holds 1 NaN/Inf"):
        save_upsampler(tmp_path / "nan.safetensors", up)
    assert not (tmp_path / "nan.safetensors").exists()
    # a file written by other means: refused on loading
    tensors, _ = read_upsampler_file(good)
    tensors[name] = tensors[name].clone().fill_(float("inf"))
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(tmp_path / "inf.safetensors"), metadata=meta)
    with pytest.raises(WeightFileError, match="NaN/Inf values .* diverged run"):
        load_upsampler(tmp_path / "inf.safetensors", tiny_spec)


# -- 5. bad input tensors ----------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "dtype torch.uint8.*normalise"),
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.float16), "dtype torch.float16.*float32"),
    (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.float64), "dtype torch.float64.*float32"),
    (lambda: torch.zeros(0, 3, 32, 32), "empty image batch"),
    (lambda: torch.zeros(2, 3, 32, 32).index_fill_(2, torch.tensor([5]), float("nan")), "192 NaN/Inf values"),
    (lambda: torch.full((1, 3, 32, 32), float("inf")), "3072 NaN/Inf values"),
], ids=["uint8", "float16", "float64", "empty", "nan", "inf"])
def test_bad_image_batches_get_a_clear_error(tiny_backbone, make, message):
    with pytest.raises(ValueError, match=message):
        tiny_backbone(make())


# -- 6. data quirks ----------------------------------------------------------------------------------
def test_16_bit_png_loads_with_its_real_values(tmp_path):
    from PIL import Image

    from brixel_plugins.images import load_rgb

    ramp = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth16.png")
    rgb = np.asarray(load_rgb(str(tmp_path / "depth16.png")))
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200  # not saturated to white


def tool_main(path: str):
    """``main`` of a tool script, loaded from its file (``import tools.x`` would find detectron2's)."""
    return runpy.run_path(str(ROOT / path), run_name="tool_under_test")["main"]


@pytest.mark.parametrize("argv, message", [
    ("tools/benchmark.py --sizes 8,abc", "argument --sizes: expected comma-separated positive integers"),
    ("tools/benchmark.py --target -4", "argument --target: expected a positive integer, got '-4'"),
    ("tools/benchmark.py --device potato", "argument --device: unknown device 'potato'"),
    ("tools/visualize.py --hr-size 32 --size 64", "--hr-size (32) must be larger than --size (64)"),
], ids=["sizes", "target", "device", "hr-size"])
def test_cli_arguments_are_validated_by_argparse(argv, message, capsys):
    tool, *args = argv.split()
    with pytest.raises(SystemExit) as stop:
        tool_main(tool)(args)
    assert stop.value.code == 2  # argparse's usage error, before any work
    err = capsys.readouterr().err
    assert "usage:" in err and message in err, err
