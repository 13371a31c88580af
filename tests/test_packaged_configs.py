"""The packaged configs and tools (``brixel_plugins::<path>``, ``d2.model_zoo``) and the ``brixel`` command,
from this checkout; tests/test_wheel.py does the same from an installed wheel."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, TINY_DIMS

from brixel_plugins.cli.commands import COMMANDS, main, tool_argv
from brixel_plugins.common import packaged

ROOT = Path(__file__).resolve().parents[1]
TOY = "mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"


def test_every_tool_is_a_command():
    assert sorted(script for script, _ in COMMANDS.values()) == sorted(p.name for p in (ROOT / "tools").glob("*.py"))


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, (_, hlp) in COMMANDS.items():
        assert f"  {name} " in out and hlp in out


def test_unknown_command_is_refused_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian", "x.py"])
    assert e.value.code == 2
    assert "unknown command 'trian'; did you mean train" in capsys.readouterr().err


def test_packaged_names_resolve_to_the_checkout_files():
    assert packaged.checkout_root() == ROOT
    assert packaged.config_file(f"brixel_plugins::{TOY}") == str(ROOT / "configs" / TOY)
    assert packaged.config_file(TOY) == str(ROOT / "configs" / TOY)
    argv = tool_argv("train", [f"brixel_plugins::{TOY}", "--launcher", "pytorch", "--work-dir", "w"])
    assert argv == [str(ROOT / "tools" / "train.py"), str(ROOT / "configs" / TOY), "--launcher", "pytorch",
                    "--work-dir", "w"]
    d2 = "brixel_plugins::d2/toy/mask_rcnn_dinov3_vits16_brixel_toy.py"
    assert tool_argv("d2-train", [f"--config-file={d2}"])[1] == f"--config-file={packaged.config_file(d2)}"


@pytest.mark.parametrize("name, what", [
    (f"brixel_plugins::{TOY[:-3]}_typo.py", "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"),
    ("brixel_plugins::../setup.py", "expected a path under the packaged configs/ folder"),
    ("brixel_plugins::", "expected a path under the packaged configs/ folder"),
])
def test_bad_packaged_names_are_explained(name, what):
    with pytest.raises((FileNotFoundError, ValueError), match=None) as e:
        packaged.config_file(name)
    assert what in str(e.value)


def test_command_error_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "brixel_plugins.cli.commands", "train", "brixel_plugins::mmseg/nope.py"],
                       cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: no packaged config")


def test_d2_model_zoo_gives_the_packaged_lazyconfigs():
    pytest.importorskip("detectron2")
    from brixel_plugins.d2 import model_zoo

    coco = model_zoo.get_config_file("COCO/mask_rcnn_dinov3_vitb16_brixel_100ep.py")
    assert coco == str(ROOT / "configs" / "d2" / "COCO" / "mask_rcnn_dinov3_vitb16_brixel_100ep.py")
    cfg = model_zoo.get_config("toy/mask_rcnn_dinov3_vits16_bilinear_toy.py")
    assert {"model", "dataloader", "train", "optimizer"} <= set(cfg.keys())
    assert cfg.model.backbone.net.arch == "vits16"
    with pytest.raises(FileNotFoundError, match="mask_rcnn_dinov3_vits16_brixel_toy.py"):
        model_zoo.get_config("toy/mask_rcnn_dinov3_vits16_nope_toy.py")
    with pytest.raises(ValueError, match="not a Detectron2 config"):
        model_zoo.get_config_file(f"brixel_plugins::{TOY}")
    with pytest.raises(ValueError, match="publishes no trained detectors"):
        model_zoo.get_config("toy/mask_rcnn_dinov3_vits16_bilinear_toy.py", trained=True)


def test_torchrun_reaches_the_tool_with_its_launcher(tmp_path):
    """``torchrun -m brixel_plugins.cli.commands train CONFIG --launcher pytorch`` as the docs say (one process
    here; tests/test_distributed.py covers two): the tool starts its process group from torchrun's
    environment and trains."""
    pytest.importorskip("mmseg")
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader")
    opts = [*(f"model.backbone.{k}={v}" for k, v in TINY_DIMS.items()),
            f"model.decode_head.in_channels={TINY['embed_dim']}",
            *(f"{lo}.dataset.data_root={tmp_path / 'toy'}" for lo in loaders),
            *(f"{lo}.dataset.generate.{k}={v}" for lo in loaders
              for k, v in dict(num_train=4, num_val=2, size=64).items()),
            "train_dataloader.batch_size=2", "train_cfg.max_iters=1", "train_cfg.val_interval=100",
            "default_hooks.logger.interval=1", "default_hooks.checkpoint.interval=1"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    p = subprocess.run([torchrun, "--nproc-per-node", "1", "--master-port", str(port),
                        "-m", "brixel_plugins.cli.commands", "train", f"brixel_plugins::{TOY}", "--launcher", "pytorch",
                        "--work-dir", str(tmp_path / "w"), "--cfg-options", *opts],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert "Distributed training: True" in log and "Iter(train) [1/1]" in log
    assert (tmp_path / "w" / "iter_1.pth").is_file()


def test_a_config_inheriting_a_packaged_mmseg_config_builds_mmseg_types(tmp_path):
    """``_base_ = ['brixel_plugins::<toy>']``: mmengine finds the base in the package (.mim) and scopes its
    dicts ``brixel_plugins``; in the mmseg Runner they still build mmseg's types, mmseg's LoadAnnotations
    rather than mmcv's of the same name (which reads no label map: KeyError 'instances')."""
    pytest.importorskip("mmseg")
    from mmengine.config import Config
    from mmengine.registry import RUNNERS

    packaged.register_with_mmengine()
    (tmp_path / "mine.py").write_text(f"_base_ = ['brixel_plugins::{TOY}']\nwork_dir = {str(tmp_path / 'w')!r}\n")
    cfg = Config.fromfile(str(tmp_path / "mine.py"))
    assert cfg.model.get("_scope_") == "brixel_plugins"  # what mmengine does to a package's base
    cfg.merge_from_dict({**{f"model.backbone.{k}": v for k, v in TINY_DIMS.items()},
                         "model.decode_head.in_channels": TINY["embed_dim"],
                         "train_dataloader.dataset.data_root": str(tmp_path / "toy"),
                         **{f"train_dataloader.dataset.generate.{k}": v
                            for k, v in dict(num_train=2, num_val=1, size=32).items()}})
    runner = RUNNERS.build(cfg)
    assert type(runner.model).__module__.startswith("mmseg.")
    assert type(runner.visualizer).__name__ == "SegLocalVisualizer"
    loader = runner.train_dataloader
    load = next(t for t in loader.dataset.pipeline.transforms if type(t).__name__ == "LoadAnnotations")
    assert type(load).__module__.startswith("mmseg.")
    assert next(iter(loader))["data_samples"][0].gt_sem_seg.data.shape[-2:] == (32, 32)


def test_tools_load_packaged_names_and_bases(tmp_path):
    """tools/train.py, test.py and distill.py (engine.tool.load_config) take ``brixel_plugins::<path>``
    and configs inheriting one, in a fresh process (mmengine knows nothing of us until the tool says)."""
    pytest.importorskip("mmseg")
    (tmp_path / "mine.py").write_text(
        f"_base_ = ['brixel_plugins::{TOY}']\nmodel = dict(decode_head=dict(num_classes=3))\n")
    script = ("import argparse; from brixel_plugins.engine.tool import load_config\n"
              "for c in ('brixel_plugins::" + TOY + "', 'mine.py'):\n"
              "    cfg = load_config(argparse.Namespace(config=c, cfg_options=None, launcher='none', work_dir=None))\n"
              "    print(cfg.filename, cfg.model.decode_head.num_classes, cfg.work_dir)\n")
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr[-3000:]
    (packaged_file, n1, w1), (mine, n2, w2) = (line.split() for line in p.stdout.strip().splitlines()[-2:])
    assert packaged_file == str(ROOT / "configs" / TOY) and n1 == "5" and w1 == f"work_dirs/{Path(TOY).stem}"
    assert mine.endswith("mine.py") and n2 == "3" and w2 == "work_dirs/mine"
