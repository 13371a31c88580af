"""What the command-line tools share (tools/distill.py, tools/train.py, tools/test.py,
tools/d2_train.py): the options with one meaning everywhere, the config they build, the process
group under torchrun, one run at a time per work dir. A tool's failure ends in
:func:`brixel_plugins.cli.errors.run_tool` (one ``error: ...`` line, exit status 1).

    --resume [CHECKPOINT]    continue from the newest loadable checkpoint of the work dir, or CHECKPOINT
    --amp [auto|bf16|off]    bf16 autocast: auto (default) = on with CUDA; bare --amp = bf16 (needs CUDA)
                             (tools/train.py's old flag --amp and tools/distill.py's --amp off keep working)
    --launcher none|pytorch|slurm|mpi    pytorch under torchrun (one process per GPU, or per CPU slot)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
from typing import Iterator, Optional


def add_resume_argument(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the newest loadable checkpoint in the work dir, or from CHECKPOINT")
    return p


def add_amp_argument(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--amp", nargs="?", const="bf16", default="auto", choices=["auto", "bf16", "off"],
                   help="bf16 autocast: auto (default) = on with CUDA, off without (Detectron2: the config's "
                        "train.amp.enabled, ours on with CUDA); --amp alone = bf16, which needs CUDA")
    return p


def add_launcher_argument(p: argparse.ArgumentParser,
                          choices=("none", "pytorch", "slurm", "mpi")) -> argparse.ArgumentParser:
    p.add_argument("--launcher", choices=list(choices), default="none",
                   help="job launcher: pytorch under torchrun (see docs: multi-GPU and multi-node)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def add_runner_arguments(p: argparse.ArgumentParser, work_dir_help: str) -> argparse.ArgumentParser:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``, as mmengine tools have them."""
    from mmengine.config import DictAction

    p.add_argument("--work-dir", help=work_dir_help)
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_iters=100 model.backbone.weights=FILE")
    return add_launcher_argument(p)


def parse_runner_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def amp_enabled(choice: str) -> bool:
    """``--amp`` as a yes/no: ``auto`` follows CUDA; ``bf16`` without CUDA is an error."""
    import torch

    cuda = torch.cuda.is_available()
    if choice == "bf16" and not cuda:
        raise ValueError("--amp bf16 (bf16 autocast) needs CUDA; use --amp off (or nothing) on CPU")
    return choice == "bf16" or (choice == "auto" and cuda)


def apply_resume(cfg, resume: Optional[str]) -> None:
    """``--resume`` into an mmengine config: ``auto`` = newest loadable checkpoint of the work dir."""
    if resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif resume:
        cfg.resume, cfg.load_from = True, resume


def apply_amp(cfg, choice: str) -> bool:
    """``--amp`` into an mmengine config (mmengine's ``AmpOptimWrapper`` in bfloat16); True if on."""
    if not amp_enabled(choice):
        return False
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.dtype = "bfloat16"
    return True


def load_config(args: argparse.Namespace):
    """The config file with ``--cfg-options`` merged, the launcher and the work dir set (default
    ``work_dirs/<config name>``), and gloo process groups without CUDA."""
    import torch
    from mmengine.config import Config

    from ..common.packaged import register_with_mmengine, resolve_config_name

    register_with_mmengine()  # the config may be, or inherit, brixel_plugins::<path> (a packaged config)
    args.config = resolve_config_name(args.config)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"  # CPU process groups
    return cfg


def init_cpu_process_group(launcher: str) -> None:
    """mmengine's ``init_dist`` always selects a CUDA device: on CPU under torchrun
    (``--launcher pytorch``) start the gloo group from torchrun's environment ourselves; the
    Runner then uses it as it is."""
    import torch

    if launcher == "pytorch" and not torch.cuda.is_available() and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo")


def start_process_group(cfg) -> None:
    """Start the process group of ``cfg.launcher`` now rather than in the Runner (which then uses it
    as it is), so that the ranks can agree before the Runner writes anything (:func:`work_dir_run`):
    gloo on CPU (:func:`init_cpu_process_group`), mmengine's ``init_dist`` with CUDA."""
    import torch
    from mmengine.dist import init_dist, is_distributed

    if cfg.launcher == "none" or is_distributed():
        return
    if torch.cuda.is_available():
        init_dist(cfg.launcher, **cfg.get("env_cfg", {}).get("dist_cfg", {}))
    else:
        init_cpu_process_group(cfg.launcher)


@contextlib.contextmanager
def work_dir_run(cfg) -> Iterator[None]:
    """Where a training tool runs its Runner: the process group started, ``cfg.work_dir`` locked
    for this run (:func:`brixel_plugins.engine.files.work_dir_lock`: a second run into it is
    refused before any rank writes)."""
    from .files import work_dir_lock

    start_process_group(cfg)
    with work_dir_lock(cfg.work_dir):
        yield


def build_runner(cfg):
    """The config's ``runner_type`` (e.g. ``SafeRunner``) if it names one, else mmengine's Runner."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
