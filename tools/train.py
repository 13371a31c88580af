"""Train an MMSegmentation model on frozen DINOv3 + an upsampler (mmseg's tools/train.py interface).

    python tools/train.py configs/mmseg/linear/linear_dinov3-vits16-brixel_1xb32-40e_ade20k-256x256.py
        [--work-dir DIR] [--resume [CHECKPOINT]] [--amp] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]
    torchrun --nproc-per-node 8 tools/train.py CONFIG --launcher pytorch

Only parses arguments and hands the config to mmengine's Runner (the config's ``runner_type``,
``SafeRunner``: trusted checkpoint loading, resume from the newest loadable checkpoint). Checkpoints
hold what trains (head, and the upsampler with ``train_upsampler=True``); DINOv3 and a frozen
upsampler reload from the files the config names.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description="Train a segmentor (frozen DINOv3 + upsampler) with mmengine's Runner")
    p.add_argument("config", help="train config file path")
    p.add_argument("--work-dir", help="where checkpoints and logs go (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the newest loadable checkpoint in the work dir, or from CHECKPOINT")
    p.add_argument("--amp", action="store_true",
                   help="bf16 automatic mixed precision (mmengine's AmpOptimWrapper); needs CUDA")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries, e.g. train_cfg.max_epochs=10 model.backbone.weights=FILE")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0)
    args = p.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def build_config(args):
    import torch
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit("error: --amp (bf16 autocast) needs CUDA; run without it on CPU")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.dtype = "bfloat16"
        cfg.model.backbone.autocast = "bf16"  # DINOv3 in bf16 for validation and testing too
    if not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"  # CPU process groups
    return cfg


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    return RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    import torch

    from brixel_plugins.engine import NonFiniteError

    if args.launcher == "pytorch" and not torch.cuda.is_available() and not torch.distributed.is_initialized():
        # mmengine's init_dist always selects a CUDA device; on CPU start the gloo group from
        # torchrun's environment ourselves, and the Runner uses it as it is
        torch.distributed.init_process_group(backend="gloo")
    runner = build_runner(cfg)
    try:
        runner.train()
    except NonFiniteError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
