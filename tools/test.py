"""Evaluate a trained segmentor (mmseg's tools/test.py interface).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show] [--wait-time S]
        [--show-dir DIR] [--tta] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

``--out DIR`` is mmseg's: the test metric (``IoUMetric``) also saves each prediction as a PNG of
class ids in DIR (named after its image; with ``reduce_zero_label`` the ids are shifted back by
one, as the dataset's label maps hold them), for offline evaluation; the metrics are computed as
usual. ``--show`` shows each drawn prediction in a window (needs a display; ``--wait-time``
seconds each), ``--show-dir`` saves them. Options are never abbreviated (``--show`` is not
``--show-dir``).

The checkpoint holds what trained (the head; the upsampler if it was fine-tuned); DINOv3 and a
frozen upsampler load from the files the config names, exactly as in training.
"""
from __future__ import annotations

import argparse
import numbers
import os
import os.path as osp

from brixel_plugins.engine.tool import (add_runner_arguments, build_runner, exit_on_explained_errors,
                                        init_cpu_process_group, load_config, parse_runner_args)
from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Test (and evaluate) a segmentor on frozen DINOv3 + upsampler",
                                allow_abbrev=False)
    p.add_argument("config", help="test config file path")
    p.add_argument("checkpoint", help="checkpoint written by tools/train.py")
    p.add_argument("--out", metavar="DIR", help="also save the predictions as PNGs of class ids in DIR (mmseg's "
                                                "--out: the test metric's output_dir), for offline evaluation")
    p.add_argument("--show", action="store_true", help="show each prediction in a window (needs a display)")
    p.add_argument("--wait-time", type=float, default=2, help="seconds each --show window stays (default 2)")
    p.add_argument("--show-dir", help="save images with predictions drawn over them under this folder "
                                      "(DIR/vis_data/vis_image/, DIR relative to the working directory)")
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
    if args.show and not has_display():
        raise SystemExit("error: --show opens a window, and this session has no display (DISPLAY / WAYLAND_DISPLAY "
                         "unset); use --show-dir DIR to save the drawn predictions instead")
    if args.show or args.show_dir:
        vis = cfg.default_hooks.get("visualization")
        if vis is None or vis.get("type") != "SegVisualizationHook":
            raise SystemExit("error: --show and --show-dir need default_hooks.visualization = SegVisualizationHook")
        vis.update(draw=True, interval=1, show=args.show, wait_time=args.wait_time)
        if args.show_dir:
            cfg.visualizer.save_dir = args.show_dir
    if args.out:
        apply_out(cfg, args.out)
    if args.tta:
        if "tta_model" not in cfg or "tta_pipeline" not in cfg:
            raise SystemExit("error: --tta needs tta_model and tta_pipeline in the config")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def has_display() -> bool:
    import sys

    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def apply_out(cfg, out: str) -> None:
    """mmseg's ``--out``: the test metric saves its predictions in ``out`` (``IoUMetric(output_dir=...)``)
    and still computes the metrics."""
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
    metrics = [e for e in evaluators if e.get("type") in ("IoUMetric", "mmseg.IoUMetric")]
    if not metrics:
        raise SystemExit(f"error: --out saves predictions through mmseg's IoUMetric (output_dir), and the config's "
                         f"test_evaluator has none ({', '.join(str(e.get('type')) for e in evaluators)})")
    for metric in metrics:
        metric.update(output_dir=osp.abspath(out))


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    init_cpu_process_group(args.launcher)
    with exit_on_explained_errors():
        metrics = build_runner(cfg).test()
    print({k: round(float(v), 4) if isinstance(v, numbers.Real) else v for k, v in metrics.items()})


if __name__ == "__main__":
    run_tool(main)
