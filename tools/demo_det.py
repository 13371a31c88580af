"""Detection part of ``make demo``: toy Mask R-CNN (ViTDet) over frozen DINOv3-S, bilinear vs BRIXEL.

Trains the toy configs (configs/d2/toy/, the COCO configs' detector on 128 px toy images of small
and thin textured shapes, see brixel_plugins/toydata/instances.py) once per upsampler, on CPU,
with detectron2's trainer, then scores the held-out split with ``COCOEvaluator``: box and mask AP
side by side, plus seconds per training iteration. The BRIXEL weights are the distillation
demo's (<work dir>/brixel/best_upsampler.safetensors; when missing, the distillation demo of
``tools/demo.py --methods brixel`` runs first). Results go to <work dir>/detection/ and the key
"detection" of <work dir>/summary.json; ``--work-dir`` defaults to ``work_dirs/demo`` under the
current directory. While each detector trains, a console line every tenth of the run gives the
iteration, the loss and the time left (detectron2's log goes to the run's ``train.log``). A
detector that detects nothing on the held-out split (early in training) scores AP 0, and the
table says so.

``DINOV3_WEIGHTS=path`` uses real ViT-S weights; without it the backbone is the distillation
demo's random init (seed 0, rebuilt here and checked against the BRIXEL file), and the numbers
only show that the machinery works. Torch uses 2 threads, or ``OMP_NUM_THREADS`` when set.
``--iters N`` (or ``DEMO_DET_ITERS``) sets the iterations (default 400: at 60 neither detector learns
anything; at 400 AP reaches a few %; timings in docs/detectron2.md).

The demo is ``brixel_plugins.d2.demo.detection_demo``; this script parses the command line.

    .venv/bin/python tools/demo_det.py
"""
from __future__ import annotations

import os
import os.path as osp

from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Toy Mask R-CNN on frozen DINOv3-S: bilinear vs BRIXEL (box/mask AP)")
    p.add_argument("--iters", type=int, default=int(os.environ.get("DEMO_DET_ITERS", 400)),
                   help="training iterations per upsampler (default 400, or $DEMO_DET_ITERS)")
    p.add_argument("--work-dir", default=osp.join("work_dirs", "demo"),
                   help="the demos' folder (default: work_dirs/demo under the current directory): BRIXEL's weights "
                        "are read from its brixel/, results go to its detection/ and summary.json")
    p.add_argument("--progress", type=int, default=None, metavar="N",
                   help="a progress line every N iterations (default: a tenth of each run)")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f"--iters must be >= 1, got {args.iters}")
    if args.progress is not None and args.progress < 1:
        p.error(f"--progress must be >= 1, got {args.progress}")
    return args


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.cli.console import hide_stack_notices

    hide_stack_notices()
    import torch

    from brixel_plugins.d2.demo import detection_demo

    # 2 threads (the demo's CPU budget), or OMP_NUM_THREADS when the caller sets it (e.g. 1 beside other jobs)
    torch.set_num_threads(int((os.environ.get("OMP_NUM_THREADS") or "0").split(",")[0])
                          or max(1, min(2, os.cpu_count() or 1)))
    detection_demo(args.work_dir, args.iters, args.progress)


if __name__ == "__main__":
    run_tool(main)
