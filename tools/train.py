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

from brixel_plugins.engine.tool import (add_runner_arguments, build_runner, init_cpu_process_group, load_config,
                                        parse_runner_args)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a segmentor (frozen DINOv3 + upsampler) with mmengine's Runner")
    p.add_argument("config", help="train config file path")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from the newest loadable checkpoint in the work dir, or from CHECKPOINT")
    p.add_argument("--amp", action="store_true",
                   help="bf16 automatic mixed precision (mmengine's AmpOptimWrapper); needs CUDA")
    add_runner_arguments(p, "where checkpoints and logs go (default: work_dirs/<config name>)")
    return parse_runner_args(p, argv)


def build_config(args):
    import torch

    cfg = load_config(args)
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
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    from brixel_plugins.engine import NonFiniteError

    init_cpu_process_group(args.launcher)
    runner = build_runner(cfg)
    try:
        runner.train()
    except NonFiniteError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    main()
