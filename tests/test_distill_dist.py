"""tools/distill.py as users run it: the CLI on one process, then --resume (2 processes and 2 nodes:
tests/test_distributed.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import tiny_distill_options

from brixel_plugins.files.upsampler_file import read_upsampler_file

ROOT = Path(__file__).resolve().parents[1]
TINY_OPTS = tiny_distill_options(2, train_cfg__max_iters=3, train_cfg__val_interval=3)


def run_tool(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("DINOV3_WEIGHTS", None)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


def test_cli_single_process_then_resume(small_photo_folder, tmp_path):
    base = [sys.executable, "tools/distill.py", "configs/distill/brixel_vits16.py",
            "--data-root", str(small_photo_folder), "--work-dir", str(tmp_path), "--amp", "off",
            "--cfg-options", *TINY_OPTS]
    out = run_tool(base)
    assert "Iter(train) [3/3]" in out and "eta:" in out and "loss_spectral" in out
    assert "bilinear" in out and "fidelity" in out  # the held-out table
    assert (tmp_path / "upsampler.safetensors").is_file() and (tmp_path / "last_checkpoint").is_file()
    assert list(tmp_path.glob("*/vis_data/events.out.tfevents.*")), "no TensorBoard scalars"
    out = run_tool(base[:-len(TINY_OPTS)] + [*TINY_OPTS, "train_cfg.max_iters=5"] + ["--resume"])
    assert "resuming at iteration 3" in out and "Iter(train) [5/5]" in out
    assert read_upsampler_file(tmp_path / "upsampler.safetensors")[1]["extra"]["iterations"] == 5
