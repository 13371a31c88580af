"""Segmentation part of ``make demo``: a linear probe on frozen DINOv3 ViT-S, trained on the toy shapes
with no upsampler, with bilinear 4x, and with the BRIXEL weights the distillation demo wrote; mIoU
side by side.

    python tools/demo_seg.py [--iters 60] [--threads 2] [--work-dir work_dirs/demo]
    # after tools/demo.py with the same --work-dir (runs it if needed)

Same code path as ``tools/train.py`` (mmengine Runner; the runs are the configs of
configs/mmseg/demo/, the toy config
configs/mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py with each
upsampler), on CPU. The toy data (brixel_plugins.toydata.segmentation) are photo crops with thin
textured shapes, so the score moves with feature resolution. ``DINOV3_WEIGHTS=path`` uses real DINOv3
weights; without it the backbone is the same seeded random init the distillation demo used (checked
against its checkpoint when that holds the backbone). ``--iters N`` (or ``DEMO_SEG_ITERS=N``) changes
the length (default 60). Everything goes under ``--work-dir`` (default ``work_dirs/demo`` under the
current directory): ``segmentation/`` and the key "segmentation" of ``summary.json``; BRIXEL's weights
are read from ``<work dir>/brixel/``. While each probe trains, a console line every tenth of the run
gives the iteration, the loss and the time left; mmengine's log goes to the run's ``train.log``.

The picture ``segmentation/pictures/predictions.png`` shows, for held-out pictures, the label map
and each run's prediction in solid class colours (nothing of the photo shows through), and each
run's errors: the pixels it got wrong in yellow over the darkened photo.

The demo is ``brixel_plugins.mmseg.demo.segmentation_demo``; this script parses the command line.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Segmentation demo: linear probe on frozen DINOv3 ViT-S, toy shapes, "
                                            "no upsampler / bilinear / BRIXEL side by side (CPU)")
    p.add_argument("--iters", type=int, default=int(os.environ.get("DEMO_SEG_ITERS", 60)),
                   help="training iterations per run (default 60, or $DEMO_SEG_ITERS)")
    p.add_argument("--work-dir", default=osp.join("work_dirs", "demo"),
                   help="the demos' folder (default: work_dirs/demo under the current directory): BRIXEL's weights "
                        "are read from its brixel/, results go to its segmentation/ and summary.json")
    p.add_argument("--progress", type=int, default=None, metavar="N",
                   help="a progress line every N iterations (default: a tenth of each run)")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                   help="torch CPU threads (default: up to 2; 1 is faster on a busy machine)")
    args = p.parse_args(argv)
    if args.iters < 1 or args.threads < 1 or (args.progress is not None and args.progress < 1):
        p.error("--iters, --threads and --progress must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.cli.console import hide_stack_notices

    hide_stack_notices()
    import torch

    from brixel_plugins.mmseg.demo import segmentation_demo

    torch.set_num_threads(args.threads)
    segmentation_demo(args.work_dir, args.iters, args.progress)


if __name__ == "__main__":
    run_tool(main)
