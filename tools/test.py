"""Evaluate a trained segmentor (mmseg's tools/test.py interface).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--tta]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

The checkpoint holds what trained (the head; the upsampler if it was fine-tuned); DINOv3 and a
frozen upsampler load from the files the config names, exactly as in training.
"""
from __future__ import annotations

import argparse
import numbers
import os.path as osp

from brixel_plugins.engine.tool import (add_runner_arguments, build_runner, exit_on_explained_errors,
                                        init_cpu_process_group, load_config, parse_runner_args)
from brixel_plugins.cli import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Test (and evaluate) a segmentor on frozen DINOv3 + upsampler")
    p.add_argument("config", help="test config file path")
    p.add_argument("checkpoint", help="checkpoint written by tools/train.py")
    p.add_argument("--show-dir", help="save images with predictions drawn over them to this folder "
                                      "(inside the work dir's timestamped folder)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation with the config's tta_model / tta_pipeline (off by default)")
    add_runner_arguments(p, "where logs and metrics go (default: work_dirs/<config name>)")
    return parse_runner_args(p, argv)


def build_config(args):
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint}")
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        vis = cfg.default_hooks.get("visualization")
        if vis is None or vis.get("type") != "SegVisualizationHook":
            raise SystemExit("error: --show-dir needs default_hooks.visualization = SegVisualizationHook")
        vis.update(draw=True, interval=1, show=False)
        cfg.visualizer.save_dir = args.show_dir
    if args.tta:
        if "tta_model" not in cfg or "tta_pipeline" not in cfg:
            raise SystemExit("error: --tta needs tta_model and tta_pipeline in the config")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    init_cpu_process_group(args.launcher)
    with exit_on_explained_errors():
        metrics = build_runner(cfg).test()
    print({k: round(float(v), 4) if isinstance(v, numbers.Real) else v for k, v in metrics.items()})


if __name__ == "__main__":
    run_tool(main)
