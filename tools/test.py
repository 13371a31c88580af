"""Evaluate a trained segmentor (mmseg's tools/test.py interface).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--tta]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

The checkpoint holds what trained (the head; the upsampler if it was fine-tuned); DINOv3 and a
frozen upsampler load from the files the config names, exactly as in training.
"""
from __future__ import annotations

import argparse
import numbers
import os
import os.path as osp


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description="Test (and evaluate) a segmentor on frozen DINOv3 + upsampler")
    p.add_argument("config", help="test config file path")
    p.add_argument("checkpoint", help="checkpoint written by tools/train.py")
    p.add_argument("--work-dir", help="where logs and metrics go (default: work_dirs/<config name>)")
    p.add_argument("--show-dir", help="save images with predictions drawn over them to this folder "
                                      "(inside the work dir's timestamped folder)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation with the config's tta_model / tta_pipeline (off by default)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0)
    args = p.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def build_config(args):
    import torch
    from mmengine.config import Config

    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint}")
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(args.config))[0])
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
    if not torch.cuda.is_available():
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    import torch

    if args.launcher == "pytorch" and not torch.cuda.is_available() and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="gloo")  # see tools/train.py
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
    metrics = runner.test()
    print({k: round(float(v), 4) if isinstance(v, numbers.Real) else v for k, v in metrics.items()})


if __name__ == "__main__":
    main()
