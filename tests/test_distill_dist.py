"""tools/distill.py as users run it: the CLI on one process, then --resume (2 processes and 2 nodes:
tests/test_distributed.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from brixel_plugins.io import read_upsampler_file

from conftest import tiny_cfg_options

ROOT = Path(__file__).resolve().parents[1]
TINY_OPTS = [
    *tiny_cfg_options(), "model.teacher_size=64", "model.student_size=16",
    "train_dataloader.dataset.size=64", "val_dataloader.dataset.size=64", "train_dataloader.batch_size=2",
    "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False", "val_dataloader.num_workers=0",
    "train_dataloader.dataset.num_val=2", "val_dataloader.dataset.num_val=2",
    "train_cfg.max_epochs=None", "train_cfg.max_iters=3", "train_cfg.val_interval=3",
    "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from brixel_plugins.images import skimage_photo_files
    from brixel_plugins.images import load_rgb

    root = tmp_path_factory.mktemp("imgs")
    for i, f in enumerate(skimage_photo_files()[:8]):
        im = load_rgb(f)
        im.thumbnail((80, 80))
        im.save(root / f"p{i}.jpg")
    return root


def run_tool(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("DINOV3_WEIGHTS", None)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


def test_cli_single_process_then_resume(folder, tmp_path):
    base = [sys.executable, "tools/distill.py", "configs/distill/brixel_vits16.py", "--data-root", str(folder),
            "--work-dir", str(tmp_path), "--amp", "off", "--cfg-options", *TINY_OPTS]
    out = run_tool(base)
    assert "Iter(train) [3/3]" in out and "eta:" in out and "loss_spectral" in out
    assert "bilinear" in out and "fidelity" in out  # the held-out table
    assert (tmp_path / "upsampler.safetensors").is_file() and (tmp_path / "last_checkpoint").is_file()
    assert list(tmp_path.glob("*/vis_data/events.out.tfevents.*")), "no TensorBoard scalars"
    out = run_tool(base[:-len(TINY_OPTS)] + [*TINY_OPTS, "train_cfg.max_iters=5"] + ["--resume"])
    assert "resuming at iteration 3" in out and "Iter(train) [5/5]" in out
    assert read_upsampler_file(tmp_path / "upsampler.safetensors")[1]["extra"]["iterations"] == 5
