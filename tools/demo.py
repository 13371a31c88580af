"""The distillation demo (``make demo-distill``): BRIXEL, LiFT, JBU, FeatSharp, AnyUp, JAFAR and
LoftUp distilled for DINOv3 ViT-S on the photos bundled with scikit-image, on CPU, then ONE held-out
table (each upsampler beside bilinear interpolation), a PCA picture with one column per upsampler, and
``work_dirs/demo/summary.json`` (``--work-dir``, default ``work_dirs/demo`` under the current directory).

    python tools/demo.py                          # brixel, lift, jbu, featsharp, anyup, jafar, loftup
    python tools/demo.py --methods brixel         # one method (the segmentation/detection demos)
    python tools/demo.py --methods lift --iters 50

Every method trains its recipe ``configs/distill/demo/<method>.py`` (the method's config, the demo's
departures from it and a schedule a CPU finishes in minutes) under one protocol
(``brixel_plugins/distill/demo.py``), so the table compares like with like: the upsampler sees the
image at 96 px (a 6x6 token grid) and must predict what DINOv3 computes from the same image at
384 px (24x24 tokens), i.e. 4x; three natural colour photos (chelsea, coffee, rocket) are held
out; training runs through the same code path as ``tools/distill.py`` (mmengine Runner, a
training and a validation folder) on random crops and flips of the other bundled photos. Weights
go to ``<work dir>/<method>/best_upsampler.safetensors`` (best validation loss; the table
reports that checkpoint) and ``upsampler.safetensors`` (last). While a method trains, a console
line every tenth of the run gives iteration / total, the loss and the time left (``--progress N``:
every N iterations). The demo is ``brixel_plugins.distill.demo.distillation_demo``; this script parses
the command line.

``DINOV3_WEIGHTS=path`` uses real ViT-S weights; without it the backbone is a random init (said
loudly: the numbers then show that the machinery works, not what real features look like).
"""
from __future__ import annotations

import argparse
import os.path as osp

from brixel_plugins.cli.console import hide_stack_notices
from brixel_plugins.cli.errors import run_tool


def main(argv=None):
    hide_stack_notices()
    import torch

    from brixel_plugins.distill import demo
    from brixel_plugins.distill.demo import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    parser.add_argument("--iters", type=int, default=None, help="iterations per method (default: per method)")
    parser.add_argument("--work-dir", default=osp.join("work_dirs", "demo"),
                        help="where weights, logs, pictures and summary.json go (default: work_dirs/demo under "
                             "the current directory)")
    parser.add_argument("--progress", type=int, default=None, metavar="N",
                        help="a progress line every N iterations (default: a tenth of each run)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    if args.progress is not None and args.progress < 1:
        parser.error(f"--progress must be >= 1, got {args.progress}")
    torch.set_num_threads(demo.demo_threads())
    demo.distillation_demo(methods, args.work_dir, args.iters, args.progress)


if __name__ == "__main__":
    run_tool(main)
