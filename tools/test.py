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

from brixel_plugins.cli.errors import run_tool
from brixel_plugins.engine.tool import (
    add_runner_arguments,
    build_runner,
    init_cpu_process_group,
    load_config,
    parse_runner_args,
)


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


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.mmseg.inference import apply_test_options

    cfg = apply_test_options(load_config(args), args.checkpoint, out=args.out, show=args.show,
                             wait_time=args.wait_time, show_dir=args.show_dir, tta=args.tta)
    init_cpu_process_group(args.launcher)
    metrics = build_runner(cfg).test()
    print({k: round(float(v), 4) if isinstance(v, numbers.Real) else v for k, v in metrics.items()})


if __name__ == "__main__":
    run_tool(main)
