"""Issue 30, item 1: ``pip install`` gives a user the configs and the commands, not only the package.

The wheel is built from a copy of the repository, installed into a fresh virtual environment that
reuses this one's installed stack (torch, mmseg, ...) but not its editable ``brixel_plugins``, and used
from a folder that is not a clone: the ``brixel`` command trains a toy config by its packaged name,
and mmseg's stock route (``Config.fromfile`` of a config inheriting ``brixel_plugins::<path>``, then
the Runner, as mmseg's tools/train.py does) trains it too. Select with ``-k wheel``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import TINY, TINY_DIMS

ROOT = Path(__file__).resolve().parents[1]
TOY = "mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"
# what a build must not see of this checkout: environments, outputs, generated data, git
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "work_dirs", "outputs", "data",
                              "__pycache__", "*.pyc", ".pytest_cache", ".mim", ".whl")


def _run(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p.stdout + p.stderr


def _clean_env() -> dict:
    # no PYTHONPATH: the installed package must be the one imported, not this checkout
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "BRIXEL_WEIGHTS_DIR")}
    return dict(env, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PIP_NO_INDEX="1",
                PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, the fresh environment's python, its bin folder, a working folder outside any clone)."""
    pytest.importorskip("mmseg")
    tmp = tmp_path_factory.mktemp("wheel")
    env = _clean_env()
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    _ok(_run([sys.executable, "-m", "pip", "--isolated", "wheel", src, "--no-deps", "--no-build-isolation",
              "--no-index", "-w", tmp / "dist"], tmp, env))
    (wheel,) = (tmp / "dist").glob("brixel_plugins-*.whl")

    venv = tmp / "env"
    _ok(_run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv], tmp, env))
    py = venv / "bin" / "python"
    site = Path(_ok(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)).strip())
    # this environment's installed stack, appended as a plain path: the .pth files inside it (the
    # editable brixel_plugins of this checkout) are not processed, so only the wheel provides it
    (site / "zz_reuse_stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _ok(_run([py, "-m", "pip", "--isolated", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
             tmp, env))
    work = tmp / "user"
    work.mkdir()
    return dict(wheel=wheel, python=py, bin=venv / "bin", site=site, work=work, env=env)


def _tiny_options(data_root: Path) -> dict:
    """Config overrides for the toy config: the tiny DINOv3, 2 iterations, a small toy set under ``data_root``."""
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader")
    return {**{f"model.backbone.{k}": v for k, v in TINY_DIMS.items()},
            "model.decode_head.in_channels": TINY["embed_dim"],
            **{f"{lo}.dataset.data_root": str(data_root) for lo in loaders},
            **{f"{lo}.dataset.generate.{k}": v for lo in loaders
               for k, v in dict(num_train=4, num_val=2, size=64).items()},
            "train_dataloader.batch_size": 2, "val_dataloader.batch_size": 2, "train_cfg.max_iters": 2,
            "train_cfg.val_interval": 2, "default_hooks.logger.interval": 1, "default_hooks.checkpoint.interval": 2}


def test_wheel_carries_configs_tools_and_license(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert f"brixel_plugins/.mim/configs/{TOY}" in names
    assert "brixel_plugins/.mim/configs/mmseg/_base_/datasets/toy_shapes.py" in names  # its relative bases
    assert "brixel_plugins/.mim/configs/d2/COCO/mask_rcnn_dinov3_vitb16_brixel_100ep.py" in names
    assert "brixel_plugins/.mim/configs/distill/_base_/methods/brixel.py" in names
    repo_tools = {p.name for p in (ROOT / "tools").glob("*.py")}
    assert {n.rsplit("/", 1)[-1] for n in names if n.startswith("brixel_plugins/.mim/tools/")} == repo_tools
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    assert any(n.endswith("LICENSE") and "dist-info" in n for n in names)
    assert "brixel_plugins_mmengine.pth" in names  # brixel_plugins:: for programs that do not import us
    assert not any("__pycache__" in n for n in names)


def test_wheel_installs_apart_from_the_checkout(installed):
    py, env = installed["python"], installed["env"]
    show = "import brixel_plugins.common.packaged as p; print(p.PACKAGE_DIR); print(p.folder('configs'))"
    where = _ok(_run([py, "-c", show], installed["work"], env)).split()
    assert Path(where[0]).is_relative_to(installed["site"]) and not Path(where[0]).is_relative_to(ROOT)
    assert where[1] == str(Path(where[0]) / ".mim" / "configs")
    assert (installed["bin"] / "brixel").is_file()
    out = _ok(_run([installed["bin"] / "brixel", "--help"], installed["work"], env))
    from brixel_plugins.cli.commands import COMMANDS
    assert all(name in out for name in COMMANDS)


def test_wheel_console_script_trains_a_packaged_config(installed):
    """``brixel train brixel_plugins::<toy>`` from a folder without configs/: the packaged tool and config."""
    work = installed["work"]
    opts = [f"{k}={v}" for k, v in _tiny_options(work / "toy_data").items()]
    out = _ok(_run([installed["bin"] / "brixel", "train", f"brixel_plugins::{TOY}", "--work-dir", work / "cli",
                    "--cfg-options", *opts], work, installed["env"]))
    assert "Iter(train) [2/2]" in out and "mIoU" in out, out[-3000:]
    assert (work / "cli" / "iter_2.pth").is_file()
    assert (work / "toy_data" / "img_dir" / "train").is_dir()  # the toy set went where it was told


def test_wheel_mmseg_stock_route_inherits_the_packaged_config(installed):
    """A user's config with ``_base_ = ['brixel_plugins::<toy>']``, run as mmseg's tools/train.py runs
    configs (Config.fromfile, then the Runner of runner_type; nothing of ours imported first): the base and
    its own relative bases resolve inside the installed package, and its types build in mmseg's scope."""
    work = installed["work"]
    (work / "my_probe.py").write_text(f"_base_ = ['brixel_plugins::{TOY}']\nwork_dir = {str(work / 'stock')!r}\n")
    script = textwrap.dedent("""
        import json, sys
        from mmengine.config import Config
        from mmengine.registry import RUNNERS
        from mmengine.runner import Runner
        cfg = Config.fromfile('my_probe.py')
        cfg.merge_from_dict(json.loads(sys.argv[1]))
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        runner.train()
        print('backbone', type(runner.model.backbone).__name__)
    """)
    opts = json.dumps(_tiny_options(work / "toy_data2"))
    out = _ok(_run([installed["python"], "-c", script, opts], work, installed["env"]))
    assert "Iter(train) [2/2]" in out and "backbone DINOv3Featurizer" in out, out[-3000:]
    assert "mmengine does not support to load brixel_plugins config" not in out
    assert (work / "stock" / "iter_2.pth").is_file()


def test_wheel_demos_run_from_the_package_and_write_under_the_working_directory(installed):
    """The demos are commands of an installed package too (they were refused there while they wrote
    beside their script): their results go under the current directory (--work-dir), never into
    site-packages. Their full runs are tests/test_demo_tools.py's."""
    p = _run([installed["bin"] / "brixel", "demo", "--help"], installed["work"], installed["env"])
    assert p.returncode == 0 and "--work-dir" in p.stdout, p.stderr
    p = _run([installed["bin"] / "brixel", "compare-recipes", "--help"], installed["work"], installed["env"])
    assert p.returncode == 0 and "current directory" in p.stdout, p.stderr
    assert not (installed["site"] / "brixel_plugins" / ".mim" / "work_dirs").exists()
