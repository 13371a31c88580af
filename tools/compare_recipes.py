"""Release recipe vs our default, on the distillation demo's protocol (the numbers in docs/recipes.md).

    python tools/compare_recipes.py                       # every variant, 300 iterations each
    python tools/compare_recipes.py --variants lift_release,lift_ours --iters 60

Each variant is a recipe in ``configs/distill/demo/compare/`` (a release config, or one change on
top of another variant), trained as ``tools/demo.py`` trains a method (the protocol of
``brixel_plugins/distill/demo.py``: same photos, same held-out chelsea / coffee / rocket, 96 px
in, DINOv3 at 384 px out, i.e. 4x; batch 2) and scored once on the held-out photos after the
same number of iterations. Results go to ``work_dirs/recipes/summary.json`` (``--work-dir``).
``DINOV3_WEIGHTS=path`` uses real weights; without it the backbone is a random init (the
comparison then is of the machinery). On cores shared with other jobs, ``--threads 1`` is much
faster than 2 (no OpenMP threads waiting on each other).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
VARIANTS_DIR = osp.join(ROOT, "configs", "distill", "demo", "compare")
# the table's order: LiFT from the release to ours, one change per row; JBU; the two BRIXEL architectures
VARIANTS = ("lift_release", "lift_antialias", "lift_zero_start", "lift_ours_random_init", "lift_ours",
            "jbu_release", "jbu_zero_start", "jbu_multiview", "brixel", "brixel_lean")
from brixel_plugins.cli.errors import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--iters", type=int, default=None, help="iterations per variant (default: the variant's, 300)")
    parser.add_argument("--work-dir", default=osp.join("work_dirs", "recipes"),
                        help="where runs and summary.json go (default: work_dirs/recipes under the current directory)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads (1 is much faster on cores other jobs share)")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.iters is not None and args.iters < 1:
        parser.error(f"--iters must be >= 1, got {args.iters}")
    from brixel_plugins.cli.console import hide_stack_notices

    hide_stack_notices()
    import torch

    from brixel_plugins.common.filesystem import update_json
    from brixel_plugins.distill import demo

    weights = os.environ.get("DINOV3_WEIGHTS")
    torch.set_num_threads(max(1, args.threads))
    if not weights:
        print("!! No DINOV3_WEIGHTS: RANDOM-INIT DINOv3 ViT-S backbone (a comparison of the machinery)")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    train_dir, val_dir = demo.photo_folders(osp.join(args.work_dir, "photos"))
    rows = []
    for name in names:
        # one validation, at the end: every variant is scored after the same number of steps
        cfg = demo.demo_config(osp.join(VARIANTS_DIR, f"{name}.py"), weights, train_dir, val_dir,
                               osp.join(args.work_dir, name), args.iters, validations=1)
        iters = cfg.train_cfg.max_iters
        print(f"== {cfg.demo.label.strip()} ({name}): {iters} iterations", flush=True)
        runner, seconds = demo.distil(cfg)
        row = demo.score(runner, seconds)
        update_json(osp.join(args.work_dir, "summary.json"), name, row)
        rows.append((cfg.demo.label, row))
    print(f"\nHeld-out photos ({', '.join(demo.HELD_OUT)}): {demo.STUDENT} px in, vs DINOv3 at {demo.TEACHER} px, "
          f"best checkpoint (val loss: each recipe's own objective):")
    print(demo.table(rows))


if __name__ == "__main__":
    run_tool(main)
