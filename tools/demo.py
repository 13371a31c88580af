"""The distillation demo (``make demo-distill``): BRIXEL, LiFT, JBU and FeatSharp distilled for DINOv3 ViT-S
on the photos bundled with scikit-image, on CPU, then ONE held-out table (each upsampler beside
bilinear interpolation), a PCA picture with one column per upsampler, and
``work_dirs/demo/summary.json``.

    python tools/demo.py                          # brixel, lift, jbu, featsharp
    python tools/demo.py --methods brixel         # one method (the segmentation/detection demos)
    python tools/demo.py --methods lift --iters 50

The protocol is the same for every method, so the table compares like with like: the upsampler
sees the image at 96 px (a 6x6 token grid) and must predict what DINOv3 computes from the same
image at 384 px (24x24 tokens), i.e. 4x; three natural colour photos (chelsea, coffee, rocket)
are held out. Each method trains with its own config's objective and optimiser, through the
same code path as ``tools/distill.py`` (mmengine Runner, a training and a validation folder),
on random crops and flips of the other bundled photos, with a schedule a CPU finishes in minutes
(``METHODS`` below); the release recipes train longer at higher resolution. Weights go to
``work_dirs/demo/<method>/best_upsampler.safetensors`` (best validation loss; the table reports
that checkpoint) and ``upsampler.safetensors`` (last).

``DINOV3_WEIGHTS=path`` uses real ViT-S weights; without it the backbone is a random init (said
loudly: the numbers then show that the machinery works, not what real features look like).
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import shutil
import time
import uuid
import warnings


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
WORK = osp.join(ROOT, "work_dirs", "demo")
HELD_OUT = ("chelsea.png", "coffee.png", "rocket.jpg")
STUDENT, TEACHER = 96, 384  # px: 6x6 tokens in, DINOv3's 24x24 map at 384 px out (4x)

# Per method: its config, the table label, and the demo schedule (iterations, batch, overrides).
# Every method upsamples by 4 here (LiFT: its 2x module applied twice, trained end to end on the
# one 96 -> 384 pair; JBU: two 2x layers) and starts from bilinear interpolation (zero_start, the
# default of new trainings). JBU trains on the demo's direct objective (cosine + relative L1
# against DINOv3 at 384 px, as LiFT below) instead of FeatUp's multi-view recipe: FeatUp compares
# in ChannelNorm space, which leaves each pixel's magnitude free, and in this short schedule that
# recipe ended BELOW bilinear on relative L1 and fidelity (0.596 / 1.13 vs 0.568 / 1.19), while the
# direct objective beats bilinear on all three columns (measured: docs/recipes.md). LiFT departs from its release recipe in two ways:
# its lower scale is the antialiased resize the evaluation (and DenseFeaturizer) feeds it, not a
# strided subsample, and each pair adds the relative L1 error to the cosine distance (cosine
# alone leaves the magnitude free, and a held-out relative L1 far worse than bilinear's).
METHODS = {
    "brixel": dict(label="BRIXEL", config="brixel_vits16.py", iters=400, batch=2),
    "lift": dict(label="LiFT", config="lift_vits16.py", iters=200, batch=2,
                 options={"model.upsampler": dict(type="lift", factor=4, zero_start=True),
                          "model.objective.scales": 1, "model.objective.lambda_l1": 1.0,
                          "model.objective.downscale": dict(_delete_=True, type="AntialiasedResize")}),
    "jbu": dict(label="JBU", config="jbu_vits16.py", iters=200, batch=2,
                options={"model.upsampler": dict(type="jbu", factor=4, zero_start=True),
                         "model.objective": dict(_delete_=True, type="LiftObjective", scales=1, lambda_l1=1.0)}),
    # FeatSharp: the release architecture (real 384 px tiles, 4x4 of them, spectral reparametrisation,
    # NAdam with its parameter groups, clipping) on the direct objective JBU uses here, with a
    # 10-iteration warm-up, then constant; the de-bias map at the 6x6 student grid. Its release
    # objective compares with jittered LOW-resolution views; in the 20 steps the demo could afford
    # with it (6 views per step), FeatSharp stayed below JBU (docs/recipes.md)
    "featsharp": dict(label="FeatSharp", config="featsharp_vits16.py", iters=120, batch=2,
                      options={"model.upsampler": dict(type="featsharp", factor=4, debias_hw=(6, 6),
                                                       spectral_reparam=True, zero_start=True),
                               "model.objective": dict(_delete_=True, type="LiftObjective", scales=1, lambda_l1=1.0),
                               "param_scheduler": [dict(type="LinearLR", start_factor=0.1, end_factor=1.0,
                                                        begin=0, end=10, by_epoch=False)]}),
}


def photo_folders(root: str):
    """Link scikit-image's bundled photos into ``root/train`` and ``root/val`` (held out): the
    demo reads them the way a user's run reads a training and a validation folder."""
    from brixel_plugins.distill.data import skimage_photo_files

    if osp.isdir(root):
        shutil.rmtree(root)
    train, val = osp.join(root, "train"), osp.join(root, "val")
    os.makedirs(train), os.makedirs(val)
    for f in skimage_photo_files():
        os.symlink(f, osp.join(val if osp.basename(f) in HELD_OUT else train, osp.basename(f)))
    return train, val


def distil(method: str, weights, train_dir: str, val_dir: str, iters=None):
    """Train one method; returns (runner, seconds, iterations)."""
    from mmengine.config import Config

    from brixel_plugins.distill.runner import DistillRunner

    spec = METHODS[method]
    iters = int(iters or spec["iters"])
    work = osp.join(WORK, method)
    if osp.isdir(work):
        shutil.rmtree(work)  # a fresh run: no stale checkpoints or best-model files
    cfg = Config.fromfile(osp.join(ROOT, "configs", "distill", spec["config"]))
    data = dict(root=train_dir, val_root=val_dir, size=TEACHER)
    options = {
        "model.backbone": dict(arch="vits16", weights=weights, autocast="bf16"),
        "model.teacher_size": TEACHER, "model.student_size": STUDENT,
        "train_dataloader": dict(batch_size=spec["batch"], num_workers=0, persistent_workers=False,
                                 dataset=dict(data, split="train", crop="random", scale=(0.4, 1.0))),
        "val_dataloader": dict(batch_size=1, num_workers=0, persistent_workers=False,
                               dataset=dict(data, split="val", crop="center")),
        "train_cfg": dict(_delete_=True, type="DistillLoop", max_iters=iters, val_interval=max(1, iters // 3)),
        # one resumable checkpoint, at the end; the best weights are best_upsampler.safetensors
        "default_hooks.checkpoint.interval": iters, "default_hooks.checkpoint.save_best": None,
        "default_hooks.logger.interval": 25,
        "visualizer.vis_backends": [dict(type="LocalVisBackend")],
        "env_cfg.dist_cfg.backend": "gloo",
        **spec.get("options", {}),
    }
    if any(h.get("type") == "PhiSStatsHook" for h in cfg.get("custom_hooks", [])):
        options["custom_hooks"] = [dict(type="PhiSStatsHook", num_batches=8),
                                   *[h for h in cfg.custom_hooks if h.get("type") != "PhiSStatsHook"]]
    cfg.merge_from_dict(options)
    cfg.work_dir = work
    cfg.experiment_name = f"demo_{method}_{uuid.uuid4().hex[:6]}"
    cfg.log_level = "WARNING"
    runner = DistillRunner.from_cfg(cfg)
    t0 = time.time()
    runner.train()
    return runner, time.time() - t0, iters


def best_validation(method: str) -> dict:
    """The validation row of the best checkpoint (lowest validation loss)."""
    hist = json.loads(open(osp.join(WORK, method, "val_metrics.json")).read())
    return min(hist, key=lambda h: h["loss"])


def table(results: dict) -> str:
    """One row per upsampler and one for bilinear (the same 96 px input for every method); the
    val loss is each method's objective, beside the same objective's value for bilinear."""
    head = (f"{'':<10}{'cosine':>9}{'rel L1':>9}{'fidelity':>10}{'val loss':>11}{'(bilinear)':>11}"
            f"   {'iters':>6}{'seconds':>9}")
    rows = [head]
    for method, r in results.items():
        rows.append(f"{METHODS[method]['label']:<10}{r['cosine']:>9.4f}{r['rel_l1']:>9.4f}{r['fidelity']:>10.4f}"
                    f"{r['val_loss']:>11.4f}{r['bilinear']['val_loss']:>11.4f}   {r['iterations']:>6d}{r['seconds']:>9.0f}")
    b = next(iter(results.values()))["bilinear"]
    rows.append(f"{'bilinear':<10}{b['cosine']:>9.4f}{b['rel_l1']:>9.4f}{b['fidelity']:>10.4f}")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    parser.add_argument("--iters", type=int, default=None, help="iterations per method (default: per method)")
    args = parser.parse_args(argv)
    from brixel_plugins.utils import hide_stack_notices

    hide_stack_notices()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    import torch

    from brixel_plugins.pca_figure import pca_figure
    from brixel_plugins.utils import update_json

    weights = os.environ.get("DINOV3_WEIGHTS")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if weights:
        print(f"DINOv3 ViT-S weights: {weights}")
    else:
        print("!! No DINOV3_WEIGHTS: using a RANDOM-INIT DINOv3 ViT-S backbone. The table shows the "
              "machinery, not real features; set DINOV3_WEIGHTS=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    train_dir, val_dir = photo_folders(osp.join(WORK, "photos"))
    print(f"Demo protocol: DINOv3 ViT-S; every upsampler sees {STUDENT} px ({STUDENT // 16}x{STUDENT // 16} tokens) "
          f"and predicts DINOv3 at {TEACHER} px ({TEACHER // 16}x{TEACHER // 16}); training on random crops and "
          f"flips of {len(os.listdir(train_dir))} scikit-image photos, held out: {', '.join(sorted(os.listdir(val_dir)))}; CPU.")

    results, runners = {}, {}
    for method in methods:
        spec = METHODS[method]
        print(f"\n== {spec['label']}: configs/distill/{spec['config']}, {args.iters or spec['iters']} iterations, "
              f"batch {spec['batch']} ==", flush=True)
        runner, seconds, iters = distil(method, weights, train_dir, val_dir, args.iters)
        runners[method] = runner
        best = best_validation(method)
        results[method] = dict(
            cosine=best["upsampler/cosine"], rel_l1=best["upsampler/rel_l1"], fidelity=best["upsampler/fidelity"],
            val_loss=best["loss"], best_iteration=int(best["iteration"]), iterations=iters, seconds=round(seconds, 1),
            bilinear=dict(cosine=best["bilinear/cosine"], rel_l1=best["bilinear/rel_l1"],
                          fidelity=best["bilinear/fidelity"], val_loss=best["bilinear_loss"]),
            objective=runner.model.objective_cfg, student_px=STUDENT, teacher_px=TEACHER,
            weights=osp.relpath(osp.join(WORK, method, "best_upsampler.safetensors"), ROOT))
        print(f"{spec['label']}: {iters} iterations in {seconds:.0f} s (incl. validation), best at iteration "
              f"{best['iteration']}", flush=True)

    print(f"\nHeld-out photos ({', '.join(HELD_OUT)}): {STUDENT} px in, vs DINOv3 at {TEACHER} px "
          f"(best checkpoint of each method; val loss = each method's own objective):")
    print(table(results))
    losers = [m for m, r in results.items()
              if not (r["cosine"] > r["bilinear"]["cosine"] and r["rel_l1"] < r["bilinear"]["rel_l1"]
                      and r["fidelity"] > r["bilinear"]["fidelity"])]
    if losers:
        print(f"!! not better than bilinear on every column: {', '.join(METHODS[m]['label'] for m in losers)}")
    summary = osp.join(WORK, "summary.json")
    previous = json.loads(open(summary).read()).get("distill", {}) if osp.isfile(summary) else {}
    update_json(summary, "distill", {**previous, **results})
    print(f"Summary: {summary} (key 'distill')")

    # the PCA picture: one row per held-out photo, one column per upsampler (best weights)
    from brixel_plugins.io import load_upsampler

    backbone = runners[methods[0]].model.backbone
    for method in methods[1:]:  # every run seeds the same backbone init; the picture relies on it
        other = runners[method].model.backbone.state_dict()
        if any(not torch.equal(v, other[k]) for k, v in backbone.state_dict().items()):
            raise RuntimeError(f"the {method} run built a different backbone than the {methods[0]} run")
    ups = []
    for method in methods:
        up = load_upsampler(osp.join(WORK, method, "best_upsampler.safetensors"), backbone.spec).eval()
        ups.append((METHODS[method]["label"], up))
    photos = [osp.join(val_dir, f) for f in sorted(os.listdir(val_dir))]
    path = pca_figure(photos, backbone, ups, osp.join(WORK, "demo_pca.png"), size=STUDENT, hr_size=TEACHER)
    print(f"PCA picture: {path}")
    for method in methods:
        print(f"{METHODS[method]['label']} weights: {osp.join(WORK, method, 'best_upsampler.safetensors')} (best), "
              f"{osp.join(WORK, method, 'upsampler.safetensors')} (last)")


if __name__ == "__main__":
    main()
