"""The distillation demo (``tools/demo.py``, :func:`distillation_demo`), its protocol and its
train-and-score routine, shared with ``tools/compare_recipes.py`` (release recipe vs ours).

The protocol is the same for every recipe, so a table compares like with like: the upsampler
sees the image at ``STUDENT`` = 96 px (a 6x6 token grid) and must predict what DINOv3 (ViT-S)
computes from the same image at ``TEACHER`` = 384 px (24x24 tokens), i.e. 4x; the photos
``HELD_OUT`` (chelsea, coffee, rocket) are the validation folder, the other photos bundled with
scikit-image the training folder (:func:`photo_folders`). A recipe is a distillation config
(``configs/distill/demo/<method>.py``) holding the method's own recipe and a ``demo`` block
with the demo's knobs::

    demo = dict(label='LiFT', iters=200, batch_size=2, train_crop='random')

(``train_crop``: the training crop policy, default random crops of 0.4 to all of the short side
and flips). :func:`demo_config` applies the protocol to it; :func:`distil` trains it through
the same code path as ``tools/distill.py`` (mmengine Runner, a training and a validation folder)
and :func:`score` reads the held-out numbers of the best checkpoint (lowest validation loss).
"""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import shutil
import time
import uuid
import warnings
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch

from ..common import packaged
from ..common.filesystem import update_json
from ..images import skimage_photo_files

STUDENT, TEACHER = 96, 384  # px: 6x6 tokens in, DINOv3's 24x24 map at 384 px out (4x)
HELD_OUT = ("chelsea.png", "coffee.png", "rocket.jpg")
ARCH = "vits16"
DEFAULT_WORK_DIR = osp.join("work_dirs", "demo")  # the demos' --work-dir, under the current directory
# the recipes configs/distill/demo/<method>.py, in table order
METHODS = ("brixel", "lift", "jbu", "featsharp", "anyup", "jafar", "loftup")


def photo_folders(root: str) -> Tuple[str, str]:
    """Link scikit-image's bundled photos into ``root/train`` and ``root/val`` (``HELD_OUT``):
    the demo reads them the way a user's run reads a training and a validation folder."""
    if osp.isdir(root):
        shutil.rmtree(root)
    train, val = osp.join(root, "train"), osp.join(root, "val")
    os.makedirs(train), os.makedirs(val)
    for f in skimage_photo_files():
        os.symlink(f, osp.join(val if osp.basename(f) in HELD_OUT else train, osp.basename(f)))
    return train, val


def demo_config(path: str, weights: Optional[str], train_dir: str, val_dir: str, work_dir: str,
                iters: Optional[int] = None, validations: int = 3):
    """The recipe at ``path`` under the demo protocol: ViT-S (``weights``, None = random init),
    96 px student, 384 px teacher, the photo folders, ``iters`` iterations (default the recipe's
    ``demo.iters``), ``validations`` evenly spaced validations (the last at the end), one
    resumable checkpoint at the end (the best weights are ``best_upsampler.safetensors``)."""
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    if "demo" not in cfg:
        raise ValueError(f"{path} is not a demo recipe: it has no demo=dict(label=..., iters=..., batch_size=...)")
    iters = int(iters or cfg.demo.iters)
    data = dict(root=train_dir, val_root=val_dir, size=TEACHER)
    cfg.merge_from_dict({
        "model.backbone": dict(arch=ARCH, weights=weights, autocast="bf16"),
        "model.teacher_size": TEACHER, "model.student_size": STUDENT,
        "train_dataloader": dict(batch_size=cfg.demo.batch_size, num_workers=0, persistent_workers=False,
                                 dataset=dict(data, split="train", crop=cfg.demo.get("train_crop", "random"),
                                              scale=(0.4, 1.0))),
        "val_dataloader": dict(batch_size=1, num_workers=0, persistent_workers=False,
                               dataset=dict(data, split="val", crop="center")),
        "train_cfg": dict(_delete_=True, type="DistillLoop", max_iters=iters,
                          val_interval=max(1, iters // int(validations))),
        "default_hooks.checkpoint.interval": iters, "default_hooks.checkpoint.save_best": None,
        "default_hooks.logger.interval": 25,
        "visualizer.vis_backends": [dict(type="LocalVisBackend")],
        "env_cfg.dist_cfg.backend": "gloo",
    })
    cfg.work_dir = work_dir
    cfg.experiment_name = f"demo_{osp.basename(work_dir)}_{uuid.uuid4().hex[:6]}"
    cfg.log_level = "WARNING"
    return cfg


def progress_hook(label: str, total: int, every: Optional[int] = None):
    """An mmengine hook saying training progress on the console (``console.Progress``: iteration /
    total, loss, time left), also while ``console.output_to`` sends the framework's log to a file."""
    from mmengine.hooks import Hook

    from ..cli.console import Progress

    class ProgressHook(Hook):
        priority = "VERY_LOW"

        def __init__(self):
            self.progress = Progress(label, total, every)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            loss = (outputs or {}).get("loss")
            loss = loss.detach() if hasattr(loss, "detach") else loss  # the graph's loss: a number to print
            self.progress.step(runner.iter + 1, None if loss is None else float(loss))

    return ProgressHook()


def distil(cfg, hooks: Sequence = ()):
    """Train ``cfg`` in a fresh ``cfg.work_dir`` (no stale checkpoints or best-model files), with
    ``hooks`` (mmengine hooks, e.g. :func:`progress_hook`) added; returns (runner, seconds
    including validation)."""
    from .runner import DistillRunner

    if osp.isdir(cfg.work_dir):
        shutil.rmtree(cfg.work_dir)
    runner = DistillRunner.from_cfg(cfg)
    for hook in hooks:
        runner.register_hook(hook)
    t0 = time.time()
    runner.train()
    return runner, time.time() - t0


def best_validation(work_dir: str) -> dict:
    """The validation row of the best checkpoint (lowest validation loss)."""
    with open(osp.join(work_dir, "val_metrics.json")) as f:
        return min(json.load(f), key=lambda h: h["loss"])


def score(runner, seconds: float) -> dict:
    """The held-out numbers of the run's best checkpoint, beside bilinear on the same images
    (cosine, relative L1, fidelity and the recipe's own validation loss)."""
    work = runner.work_dir
    best = best_validation(work)
    return dict(
        cosine=best["upsampler/cosine"], rel_l1=best["upsampler/rel_l1"], fidelity=best["upsampler/fidelity"],
        val_loss=best["loss"], best_iteration=int(best["iteration"]), iterations=int(runner.max_iters),
        seconds=round(seconds, 1),
        bilinear=dict(cosine=best["bilinear/cosine"], rel_l1=best["bilinear/rel_l1"],
                      fidelity=best["bilinear/fidelity"], val_loss=best["bilinear_loss"]),
        objective=runner.model.objective_cfg, student_px=STUDENT, teacher_px=TEACHER,
        weights=osp.join(work, "best_upsampler.safetensors"))


def not_better_than_bilinear(rows: Sequence[Tuple[str, dict]]) -> List[str]:
    """The labels whose row does not beat bilinear on every column (cosine, rel. L1, fidelity)."""
    return [label for label, r in rows
            if not (r["cosine"] > r["bilinear"]["cosine"] and r["rel_l1"] < r["bilinear"]["rel_l1"]
                    and r["fidelity"] > r["bilinear"]["fidelity"])]


def table(rows: Sequence[Tuple[str, dict]]) -> str:
    """One row per (label, :func:`score`) and one for bilinear (the same 96 px input for every
    recipe); the val loss is each recipe's objective, beside the same objective's value for bilinear."""
    width = max(10, *(len(label) + 1 for label, _ in rows))
    head = (f"{'':<{width}}{'cosine':>9}{'rel L1':>9}{'fidelity':>10}{'val loss':>11}{'(bilinear)':>11}"
            f"   {'iters':>6}{'seconds':>9}")
    lines = [head]
    for label, r in rows:
        lines.append(f"{label:<{width}}{r['cosine']:>9.4f}{r['rel_l1']:>9.4f}{r['fidelity']:>10.4f}"
                     f"{r['val_loss']:>11.4f}{r['bilinear']['val_loss']:>11.4f}   {r['iterations']:>6d}"
                     f"{r['seconds']:>9.0f}")
    b = rows[0][1]["bilinear"]
    lines.append(f"{'bilinear':<{width}}{b['cosine']:>9.4f}{b['rel_l1']:>9.4f}{b['fidelity']:>10.4f}")
    return "\n".join(lines)


def pca_picture(runs: Sequence[Tuple[str, object]], val_dir: str, path: str) -> str:
    """The PCA picture of the held-out photos: one row per photo, one column per run's best
    weights (``runs``: (label, runner) pairs, all on the same backbone), beside DINOv3 low/high-res."""
    from ..files.upsampler_file import load_upsampler
    from ..visualize.figure import pca_figure

    (first_label, first), *others = runs
    backbone = first.model.backbone
    for label, runner in others:  # every run seeds the same backbone init; the picture relies on it
        if not same_backbone(backbone, runner.model.backbone.state_dict()):
            raise RuntimeError(f"the {label} run built a different backbone than the {first_label} run")
    ups = [(label, load_upsampler(osp.join(runner.work_dir, "best_upsampler.safetensors"), backbone.spec).eval())
           for label, runner in runs]
    photos = [osp.join(val_dir, f) for f in sorted(os.listdir(val_dir))]
    return pca_figure(photos, backbone, ups, path, size=STUDENT, hr_size=TEACHER)




def same_backbone(backbone: torch.nn.Module, state: Mapping[str, Any]) -> bool:
    """Does ``state`` (a state dict) hold every tensor of ``backbone``, equal? The demos compare
    upsamplers on one DINOv3 (each run draws the same seeded random init) and rely on it."""
    return all(k in state and torch.equal(v, state[k]) for k, v in backbone.state_dict().items())


def check_distilled_backbone(backbone: torch.nn.Module, work_dir: str, method: str = "brixel") -> str:
    """Compare ``backbone`` (a random-init DINOv3 of the segmentation or detection demo) with the one
    the distillation demo trained ``method`` on, when its newest checkpoint under ``work_dir`` holds
    it; raise if they differ (the upsampler's weights would then mean nothing here). Returns a note."""
    from ..files.checkpoints import CheckpointError, load_checkpoint_file

    prefix = "backbone."
    for ckpt in sorted(glob.glob(osp.join(work_dir, method, "*.pth")), key=osp.getmtime, reverse=True):
        state = load_checkpoint_file(ckpt)["state_dict"]  # weights_only, mmengine's classes allowed
        held = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if "model.patch_embed.proj.weight" in held:
            if not same_backbone(backbone, held):
                raise CheckpointError(f"the random DINOv3 here differs from the one in {ckpt}; rerun "
                                      f"tools/demo.py, or set DINOV3_WEIGHTS for both demos")
            return f"same random init as the distillation ({osp.basename(ckpt)})"
    return "could not compare with the distillation's backbone (its checkpoints do not hold it)"


def demo_threads() -> int:
    """The distillation demo's torch CPU threads: 2 (the demo's CPU budget), fewer on a smaller machine."""
    return max(1, min(2, os.cpu_count() or 1))


def distillation_demo(methods: Sequence[str] = METHODS, work: str = DEFAULT_WORK_DIR, iters: Optional[int] = None,
                      progress: Optional[int] = None) -> dict:
    """The distillation demo (``tools/demo.py``): each of ``methods`` distilled by its recipe
    ``configs/distill/demo/<method>.py`` under the demo protocol into ``work/<method>``, then the
    held-out table, the PCA picture ``work/demo_pca.png`` and the key "distill" of
    ``work/summary.json``; ``iters``: iterations per method (default the recipe's), ``progress``: a
    progress line every N iterations (default a tenth of each run). Returns the table's numbers."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    root = packaged.folder("configs").parent
    recipes = osp.join(root, "configs", "distill", "demo")
    work = osp.abspath(work)
    weights = os.environ.get("DINOV3_WEIGHTS")
    if weights:
        print(f"DINOv3 ViT-S weights: {weights}")
    else:
        print("!! No DINOV3_WEIGHTS: using a RANDOM-INIT DINOv3 ViT-S backbone. The table shows the "
              "machinery, not real features; set DINOV3_WEIGHTS=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    train_dir, val_dir = photo_folders(osp.join(work, "photos"))
    print(f"Demo protocol: DINOv3 ViT-S; every upsampler sees {STUDENT} px ({STUDENT // 16}x"
          f"{STUDENT // 16} tokens) and predicts DINOv3 at {TEACHER} px ({TEACHER // 16}x"
          f"{TEACHER // 16}); training on random crops and flips of {len(os.listdir(train_dir))} scikit-image "
          f"photos, held out: {', '.join(sorted(os.listdir(val_dir)))}; CPU.")

    results, runs = {}, []
    for method in methods:
        path = osp.join(recipes, f"{method}.py")
        cfg = demo_config(path, weights, train_dir, val_dir, osp.join(work, method), iters)
        label = cfg.demo.label
        print(f"\n== {label}: {osp.relpath(path, root)}, {cfg.train_cfg.max_iters} iterations, "
              f"batch {cfg.train_dataloader.batch_size} ==", flush=True)
        runner, seconds = distil(cfg, [progress_hook(label, cfg.train_cfg.max_iters, progress)])
        results[method] = score(runner, seconds)
        runs.append((label, runner))
        print(f"{label}: {results[method]['iterations']} iterations in {seconds:.0f} s (incl. validation), best at "
              f"iteration {results[method]['best_iteration']}", flush=True)

    rows = [(label, results[m]) for (label, _), m in zip(runs, methods)]
    print(f"\nHeld-out photos ({', '.join(HELD_OUT)}): {STUDENT} px in, vs DINOv3 at {TEACHER} px "
          f"(best checkpoint of each method; val loss = each method's own objective):")
    print(table(rows))
    losers = not_better_than_bilinear(rows)
    if losers:
        print(f"!! not better than bilinear on every column: {', '.join(losers)}")
    summary = osp.join(work, "summary.json")
    previous = json.loads(open(summary).read()).get("distill", {}) if osp.isfile(summary) else {}
    update_json(summary, "distill", {**previous, **results})
    if "anyup" in methods:  # AnyUp's claim: the same weights on another backbone / layer, no retraining
        from .transfer import demo_transfer, transfer_lines

        line = demo_transfer(runs[methods.index("anyup")][1], STUDENT)
        print(f"\nAnyUp's best weights, unchanged, on another backbone and layer (held out, {line['seconds']:.0f} s):")
        print(transfer_lines(line))
        update_json(summary, "anyup_transfer", line)
    print(f"Summary: {summary} (key 'distill'{', anyup_transfer' if 'anyup' in methods else ''})")

    path = pca_picture(runs, val_dir, osp.join(work, "demo_pca.png"))
    print(f"PCA picture: {path}")
    for (label, runner) in runs:
        print(f"{label} weights: {osp.join(runner.work_dir, 'best_upsampler.safetensors')} (best), "
              f"{osp.join(runner.work_dir, 'upsampler.safetensors')} (last)")
    return results


def ensure_weights(work_dir: Optional[str] = None, method: str = "brixel", iters: Optional[int] = None) -> str:
    """The best weights the distillation demo wrote for ``method`` under ``work_dir`` (default
    ``work_dirs/demo`` under the current directory), after running it (:func:`distillation_demo`,
    ``iters`` iterations, default the recipe's) when they are missing: the segmentation and
    detection demos start from them."""
    work_dir = osp.abspath(work_dir or DEFAULT_WORK_DIR)
    path = osp.join(work_dir, method, "best_upsampler.safetensors")
    if osp.isfile(path):
        return path
    print(f"No {method} weights at {path}: running the distillation demo first (tools/demo.py --methods {method} "
          f"--work-dir {work_dir})", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(demo_threads())  # as tools/demo.py runs it
    try:
        distillation_demo([method], work_dir, iters)
    finally:
        torch.set_num_threads(threads)
    return path
