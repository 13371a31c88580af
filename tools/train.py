"""Train an MMSegmentation model on frozen DINOv3 + an upsampler (mmseg's tools/train.py interface).

    python tools/train.py configs/mmseg/linear/linear_dinov3-vits16-brixel_1xb32-40e_ade20k-256x256.py
        [--work-dir DIR] [--resume [CHECKPOINT]] [--amp [auto|bf16|off]] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm]
    torchrun --nproc-per-node 8 tools/train.py CONFIG --launcher pytorch     # 8 GPUs, or 8 CPU processes

Only parses arguments and hands the config to mmengine's Runner (the config's ``runner_type``,
``SafeRunner``: trusted checkpoint loading, resume from the newest loadable checkpoint). Checkpoints
hold what trains (head, and the upsampler with ``train_upsampler=True``); DINOv3 and a frozen
upsampler reload from the files the config names.
One run at a time per work dir: a second run into it is refused (``.brixel-run.lock``).
"""
from __future__ import annotations

import argparse

from brixel_plugins.cli.errors import run_tool
from brixel_plugins.engine.tool import (
    add_amp_argument,
    add_resume_argument,
    add_runner_arguments,
    apply_amp,
    apply_resume,
    build_runner,
    load_config,
    parse_runner_args,
    work_dir_run,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a segmentor (frozen DINOv3 + upsampler) with mmengine's Runner")
    p.add_argument("config", help="train config file path")
    add_resume_argument(p)
    add_amp_argument(p)
    add_runner_arguments(p, "where checkpoints and logs go (default: work_dirs/<config name>)")
    return parse_runner_args(p, argv)


def build_config(args):
    cfg = load_config(args)
    apply_resume(cfg, args.resume)
    if apply_amp(cfg, args.amp):
        cfg.model.backbone.autocast = "bf16"  # DINOv3 in bf16 for validation and testing too
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    with work_dir_run(cfg):  # one run at a time in the work dir
        build_runner(cfg).train()


if __name__ == "__main__":
    run_tool(main)
