"""The distillation demo (``make demo-distill``): BRIXEL, LiFT, JBU, FeatSharp, JAFAR and LoftUp distilled for
DINOv3 ViT-S on the photos bundled with scikit-image, on CPU, then ONE held-out table (each upsampler beside
bilinear interpolation), a PCA picture with one column per upsampler, and
``work_dirs/demo/summary.json`` (``--work-dir``, default ``work_dirs/demo`` under the current directory).

    python tools/demo.py                          # brixel, lift, jbu, featsharp, jafar, loftup
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
every N iterations).

``DINOV3_WEIGHTS=path`` uses real ViT-S weights; without it the backbone is a random init (said
loudly: the numbers then show that the machinery works, not what real features look like).
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECIPES = osp.join(ROOT, "configs", "distill", "demo")
METHODS = ("brixel", "lift", "jbu", "featsharp", "jafar", "loftup")

from brixel_plugins.cli import run_tool


def main(argv=None):
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
    work = osp.abspath(args.work_dir)
    from brixel_plugins.utils import hide_stack_notices

    hide_stack_notices()
    import torch

    from brixel_plugins.distill import demo
    from brixel_plugins.utils import update_json

    weights = os.environ.get("DINOV3_WEIGHTS")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if weights:
        print(f"DINOv3 ViT-S weights: {weights}")
    else:
        print("!! No DINOV3_WEIGHTS: using a RANDOM-INIT DINOv3 ViT-S backbone. The table shows the "
              "machinery, not real features; set DINOV3_WEIGHTS=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    train_dir, val_dir = demo.photo_folders(osp.join(work, "photos"))
    print(f"Demo protocol: DINOv3 ViT-S; every upsampler sees {demo.STUDENT} px ({demo.STUDENT // 16}x"
          f"{demo.STUDENT // 16} tokens) and predicts DINOv3 at {demo.TEACHER} px ({demo.TEACHER // 16}x"
          f"{demo.TEACHER // 16}); training on random crops and flips of {len(os.listdir(train_dir))} scikit-image "
          f"photos, held out: {', '.join(sorted(os.listdir(val_dir)))}; CPU.")

    results, runs = {}, []
    for method in methods:
        path = osp.join(RECIPES, f"{method}.py")
        cfg = demo.demo_config(path, weights, train_dir, val_dir, osp.join(work, method), args.iters)
        label = cfg.demo.label
        print(f"\n== {label}: {osp.relpath(path, ROOT)}, {cfg.train_cfg.max_iters} iterations, "
              f"batch {cfg.train_dataloader.batch_size} ==", flush=True)
        runner, seconds = demo.distil(cfg, [demo.progress_hook(label, cfg.train_cfg.max_iters, args.progress)])
        results[method] = demo.score(runner, seconds)
        runs.append((label, runner))
        print(f"{label}: {results[method]['iterations']} iterations in {seconds:.0f} s (incl. validation), best at "
              f"iteration {results[method]['best_iteration']}", flush=True)

    rows = [(label, results[m]) for (label, _), m in zip(runs, methods)]
    print(f"\nHeld-out photos ({', '.join(demo.HELD_OUT)}): {demo.STUDENT} px in, vs DINOv3 at {demo.TEACHER} px "
          f"(best checkpoint of each method; val loss = each method's own objective):")
    print(demo.table(rows))
    losers = demo.not_better_than_bilinear(rows)
    if losers:
        print(f"!! not better than bilinear on every column: {', '.join(losers)}")
    summary = osp.join(work, "summary.json")
    previous = json.loads(open(summary).read()).get("distill", {}) if osp.isfile(summary) else {}
    update_json(summary, "distill", {**previous, **results})
    print(f"Summary: {summary} (key 'distill')")

    path = demo.pca_picture(runs, val_dir, osp.join(work, "demo_pca.png"))
    print(f"PCA picture: {path}")
    for (label, runner) in runs:
        print(f"{label} weights: {osp.join(runner.work_dir, 'best_upsampler.safetensors')} (best), "
              f"{osp.join(runner.work_dir, 'upsampler.safetensors')} (last)")


if __name__ == "__main__":
    run_tool(main)
