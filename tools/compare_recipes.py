"""Release recipe vs our default, on the distillation demo's protocol (the numbers in docs/recipes.md).

    python tools/compare_recipes.py                       # every variant below, 300 iterations each
    python tools/compare_recipes.py --variants lift_release,lift_ours --iters 60

Each variant is a config plus overrides, trained exactly as ``tools/demo.py`` trains a method
(its ``distil``: same photos, same held-out chelsea / coffee / rocket, 96 px in, DINOv3 at 384 px
out, i.e. 4x; batch 2) and scored once on the held-out photos after the same number of
iterations. Results go to ``work_dirs/recipes/summary.json`` (``--work-dir``).
``DINOV3_WEIGHTS=path`` uses real weights; without it the backbone is a random init (the
comparison then is of the machinery). On cores shared with other jobs, ``--threads 1`` is much
faster than 2 (no OpenMP threads waiting on each other).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import os.path as osp
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# LiFT and JBU at 4x as the demo runs them (LiFT's 2x module twice with one scale pair; two 2x JBU
# layers). "release": the config as shipped (the authors' recipe); "ours": our defaults where they
# depart; the single-departure rows measure one change each.
_ANTIALIAS = {"model.objective.downscale": dict(_delete_=True, type="AntialiasedResize")}
_NO_JITTER = {"model.objective.colour_jitter": None}
_DEMO_CROPS = {"train_dataloader.dataset.crop": "random"}
_SQUASH = {"train_dataloader.dataset.crop": dict(type="SquashResize")}
_LIFT = {"model.upsampler.factor": 4, "model.objective.scales": 1}
_JBU = {"model.upsampler.factor": 4}
VARIANTS = {
    "lift_release": dict(label="LiFT release", config="lift_vits16.py", batch=2, options={**_LIFT, **_SQUASH}),
    "lift_antialias": dict(label="  + antialiased scales", config="lift_vits16.py", batch=2,
                           options={**_LIFT, **_SQUASH, **_ANTIALIAS}),
    "lift_zero_start": dict(label="  + zero start", config="lift_vits16.py", batch=2,
                            options={**_LIFT, **_SQUASH, "model.upsampler.zero_start": True}),
    "lift_ours_random_init": dict(label="  + crops, antialias, no jitter", config="lift_vits16.py", batch=2,
                                  options={**_LIFT, **_ANTIALIAS, **_NO_JITTER, **_DEMO_CROPS}),
    "lift_ours": dict(label="LiFT ours", config="lift_vits16.py", batch=2,
                      options={**_LIFT, **_ANTIALIAS, **_NO_JITTER, **_DEMO_CROPS, "model.upsampler.zero_start": True}),
    "jbu_release": dict(label="JBU FeatUp release", config="jbu_vits16.py", batch=2,
                        options={**_JBU, "train_dataloader.dataset.crop": dict(type="ShortSideCentreCrop")}),
    "jbu_zero_start": dict(label="  + zero start", config="jbu_vits16.py", batch=2,
                           options={**_JBU, "train_dataloader.dataset.crop": dict(type="ShortSideCentreCrop"),
                                    "model.upsampler.zero_start": True}),
    "jbu_multiview": dict(label="JBU multi-view default", config="jbu_vits16.py", batch=2,
                          options={**_JBU, **_DEMO_CROPS, "model.upsampler.zero_start": True,
                                   "model.objective": dict(_delete_=True, type="MultiViewObjective", num_jitters=5,
                                                           phi_s=True),
                                   "optim_wrapper": dict(_delete_=True, type="OptimWrapper",
                                                         constructor="DistillOptimWrapperConstructor",
                                                         optimizer=dict(type="NAdam", lr=1e-4)),
                                   "custom_hooks": [dict(type="PhiSStatsHook", num_batches=8),
                                                    dict(type="ExportUpsamplerHook")]}),
    # architectures, one recipe (docs/benchmark.md): the release BRIXEL vs BRIXEL-lean
    "brixel": dict(label="BRIXEL (release arch.)", config="brixel_vits16.py", batch=2, options={}),
    "brixel_lean": dict(label="BRIXEL-lean", config="brixel_lean_vits16.py", batch=2, options={}),
}


def load_demo():
    """tools/demo.py as a module (run as a script elsewhere; never imported as ``tools.demo``)."""
    spec = importlib.util.spec_from_file_location("brixel_demo", osp.join(ROOT, "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--iters", type=int, default=300, help="iterations per variant (default 300)")
    parser.add_argument("--work-dir", default=osp.join(ROOT, "work_dirs", "recipes"), help="where runs and summary.json go")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="torch threads (1 is much faster on cores other jobs share)")
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")

    import torch

    from brixel_plugins.utils import update_json

    demo = load_demo()
    demo.WORK = args.work_dir
    # one validation, at the end: every variant is scored after the same number of iterations
    demo.METHODS.update({k: dict(v, iters=args.iters, options={**v["options"], "train_cfg.val_interval": args.iters})
                         for k, v in VARIANTS.items()})
    weights = os.environ.get("DINOV3_WEIGHTS")
    torch.set_num_threads(max(1, args.threads))
    if not weights:
        print("!! No DINOV3_WEIGHTS: RANDOM-INIT DINOv3 ViT-S backbone (a comparison of the machinery)")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    train_dir, val_dir = demo.photo_folders(osp.join(demo.WORK, "photos"))
    rows = []
    for name in names:
        print(f"== {VARIANTS[name]['label'].strip()} ({name}): {args.iters} iterations", flush=True)
        runner, seconds, iters = demo.distil(name, weights, train_dir, val_dir, args.iters)
        best = demo.best_validation(name)
        row = dict(cosine=best["upsampler/cosine"], rel_l1=best["upsampler/rel_l1"],
                   fidelity=best["upsampler/fidelity"], val_loss=best["loss"], best_iteration=int(best["iteration"]),
                   iterations=iters, seconds=round(seconds, 1),
                   bilinear=dict(cosine=best["bilinear/cosine"], rel_l1=best["bilinear/rel_l1"],
                                 fidelity=best["bilinear/fidelity"]))
        update_json(osp.join(demo.WORK, "summary.json"), name, row)
        rows.append((VARIANTS[name]["label"], row))
    print(f"\nHeld-out photos ({', '.join(demo.HELD_OUT)}): {demo.STUDENT} px in, vs DINOv3 at {demo.TEACHER} px, "
          f"{args.iters} iterations each, best checkpoint:")
    print(f"{'':<26}{'cosine':>9}{'rel L1':>9}{'fidelity':>10}{'seconds':>9}")
    for label, r in rows:
        print(f"{label:<26}{r['cosine']:>9.4f}{r['rel_l1']:>9.4f}{r['fidelity']:>10.4f}{r['seconds']:>9.0f}")
    b = rows[0][1]["bilinear"]
    print(f"{'bilinear':<26}{b['cosine']:>9.4f}{b['rel_l1']:>9.4f}{b['fidelity']:>10.4f}")


if __name__ == "__main__":
    main()
