"""The options every trainer's tool shares mean the same thing in each (brixel_plugins.engine.tool),
and the tools stop with ``error: ...`` rather than a traceback on an error that explains itself."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = {"tools/distill.py": ["configs/distill/brixel_vits16.py"],
            "tools/train.py": ["configs/mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"],
            "tools/d2_train.py": ["--config-file", "configs/d2/toy/mask_rcnn_dinov3_vits16_bilinear_toy.py"]}


def parse(tool, *argv):
    return runpy.run_path(str(ROOT / tool), run_name="tool_under_test")["parse_args"]([*TRAINERS[tool], *argv])


@pytest.mark.parametrize("tool", sorted(TRAINERS))
def test_resume_and_amp_mean_the_same_in_every_trainer(tool):
    assert (parse(tool).resume, parse(tool).amp) == (None, "auto")
    assert parse(tool, "--resume").resume == "auto"  # newest loadable checkpoint of the work dir
    assert parse(tool, "--resume", "w/iter_4.pth").resume == "w/iter_4.pth"
    assert parse(tool, "--amp").amp == "bf16"  # tools/train.py's old flag
    assert parse(tool, "--amp", "off").amp == "off"  # tools/distill.py's old value
    assert parse(tool, "--launcher", "pytorch").launcher == "pytorch"  # torchrun


def test_amp_bf16_without_cuda_is_an_error_everywhere(monkeypatch):
    import torch

    from brixel_plugins.engine.tool import amp_enabled

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (amp_enabled("auto"), amp_enabled("off")) == (False, False)
    with pytest.raises(ValueError, match="^--amp bf16 .* needs CUDA"):  # run_tool prints it as error: ...
        amp_enabled("bf16")


def test_train_tool_reports_a_checkpoint_error_without_traceback(tmp_path):
    """tools/train.py used to show CheckpointError as a traceback (tools/distill.py printed
    ``error: ...``): now every tool prints the message and exits with status 1."""
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    data = write_toy_segmentation(tmp_path / "shapes", num_train=2, num_val=1, size=32)
    empty = tmp_path / "iter_2.pth"
    empty.write_bytes(b"")
    tiny = ["model.backbone.depth=2", "model.backbone.embed_dim=64", "model.backbone.num_heads=2",
            "model.decode_head.in_channels=64", f"train_dataloader.dataset.data_root={data}",
            "train_dataloader.dataset.generate=None", f"val_dataloader.dataset.data_root={data}",
            "val_dataloader.dataset.generate=None"]
    r = subprocess.run([sys.executable, "tools/train.py", *TRAINERS["tools/train.py"], "--work-dir", str(tmp_path),
                        "--resume", str(empty), "--cfg-options", *tiny], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and str(empty) in r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_a_failure_ends_in_one_error_line_and_debug_shows_the_traceback(tmp_path):
    """cli.run_tool: a failure a user causes (here a missing DINOv3 file) is one ``error:`` line and
    exit 1, no traceback; ``--debug`` (anywhere on the line) shows the traceback instead."""
    cmd = [sys.executable, str(ROOT / "tools" / "visualize.py"), "--weights", str(tmp_path / "missing.pth")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.pth" in lines[0], r.stderr
    r = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr


def test_d2_resume_followed_by_an_override_is_the_flag_and_the_override():
    """``d2_train.py --resume key=value`` (detectron2's habit: --resume is a flag) read the override as the
    checkpoint to resume from and ended in fvcore's 'Checkpoint ... not found'."""
    args = parse("tools/d2_train.py", "--resume", "train.max_iter=3", "train.device=cpu")
    assert args.resume == "auto" and args.opts == ["train.max_iter=3", "train.device=cpu"]
    assert parse("tools/d2_train.py", "--resume", "out/model_0000004.pth").resume == "out/model_0000004.pth"
