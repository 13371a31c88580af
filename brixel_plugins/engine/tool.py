"""What the mmengine command-line tools share (tools/distill.py, tools/train.py, tools/test.py):
the usual options, the config they build, and the CPU process group under torchrun."""
from __future__ import annotations

import argparse
import os
import os.path as osp


def add_runner_arguments(p: argparse.ArgumentParser, work_dir_help: str) -> argparse.ArgumentParser:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``, as mmengine tools have them."""
    from mmengine.config import DictAction

    p.add_argument("--work-dir", help=work_dir_help)
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_iters=100 model.backbone.weights=FILE")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0)
    return p


def parse_runner_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def load_config(args: argparse.Namespace):
    """The config file with ``--cfg-options`` merged, the launcher and the work dir set (default
    ``work_dirs/<config name>``), and gloo process groups without CUDA."""
    import torch
    from mmengine.config import Config

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


def build_runner(cfg):
    """The config's ``runner_type`` (e.g. ``SafeRunner``) if it names one, else mmengine's Runner."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
