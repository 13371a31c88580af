"""Distil an upsampler on a frozen DINOv3 (mmengine Runner); writes upsampler-only safetensors.

    python tools/distill.py configs/distill/brixel_vits16.py --data-root DIR [--weights FILE]
        [--work-dir DIR] [--resume [CHECKPOINT]] [--amp [auto|bf16|off]] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm]
    torchrun --nproc-per-node N tools/distill.py CONFIG --launcher pytorch ...   # N GPUs, or N CPU processes

Outputs in the work dir: checkpoints (``iter_*.pth``, ``best_val_loss_*.pth``, written
atomically), ``best_upsampler.safetensors`` / ``upsampler.safetensors`` (what MMSeg and Detectron2
configs load), ``val_metrics.json``, logs and TensorBoard scalars under the timestamped folder.
One run at a time per work dir: a second run into it is refused (``.brixel-run.lock``).
"""
from __future__ import annotations

import argparse
import os

from brixel_plugins.cli.errors import run_tool
from brixel_plugins.engine.tool import (
    add_amp_argument,
    add_resume_argument,
    add_runner_arguments,
    apply_amp,
    apply_resume,
    load_config,
    parse_runner_args,
    work_dir_run,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Self-distillation of a feature upsampler on frozen DINOv3")
    p.add_argument("config", help="e.g. configs/distill/brixel_vits16.py")
    add_resume_argument(p)
    p.add_argument("--data-root", help="folder of training images (sets train and val dataset roots)")
    p.add_argument("--val-root", help="separate folder of validation images")
    p.add_argument("--weights", help="DINOv3 weight file (sets model.backbone.weights); default: "
                                     "$DINOV3_WEIGHTS, else the config's value (random init if None)")
    add_amp_argument(p)
    add_runner_arguments(p, "where checkpoints, logs and exported weights go (default: work_dirs/<config name>)")
    return parse_runner_args(p, argv)


def build_config(args):
    cfg = load_config(args)
    if args.data_root:
        cfg.train_dataloader.dataset.root = args.data_root
        cfg.val_dataloader.dataset.root = args.data_root
    if args.val_root:
        cfg.train_dataloader.dataset.val_root = args.val_root
        cfg.val_dataloader.dataset.val_root = args.val_root
    weights = args.weights or os.environ.get("DINOV3_WEIGHTS")
    if weights:
        cfg.model.backbone.weights = weights
    apply_resume(cfg, args.resume)
    apply_amp(cfg, args.amp)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    from brixel_plugins.distill.runner import DistillRunner

    with work_dir_run(cfg):  # one run at a time in the work dir
        DistillRunner.from_cfg(cfg).train()


if __name__ == "__main__":
    run_tool(main)
