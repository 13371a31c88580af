"""Segmentation part of ``make demo``: a linear probe on frozen DINOv3 ViT-S, trained on the toy shapes
with no upsampler, with bilinear 4x, and with the BRIXEL weights the distillation demo wrote; mIoU
side by side.

    python tools/demo_seg.py [--iters 60] [--threads 2] [--work-dir work_dirs/demo]
    # after tools/demo.py with the same --work-dir (runs it if needed)

Same code path as ``tools/train.py`` (mmengine Runner, the toy config
configs/mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py), on CPU. The toy
data (brixel_plugins.toydata.segmentation) are photo crops with thin textured shapes, so the score
moves with feature resolution. ``DINOV3_WEIGHTS=path`` uses real DINOv3 weights; without it the
backbone is the same seeded random init the distillation demo used (checked against its checkpoint
when that holds the backbone). ``--iters N`` (or ``DEMO_SEG_ITERS=N``) changes the length (default 60).
Everything goes under ``--work-dir`` (default ``work_dirs/demo`` under the current directory):
``segmentation/`` and the key "segmentation" of ``summary.json``; BRIXEL's weights are read from
``<work dir>/brixel/``. While each probe trains, a console line every tenth of the run gives the
iteration, the loss and the time left; mmengine's log goes to the run's ``train.log``.

The picture ``segmentation/pictures/predictions.png`` shows, for held-out pictures, the label map
and each run's prediction in solid class colours (nothing of the photo shows through), and each
run's errors: the pixels it got wrong in yellow over the darkened photo.
"""
from __future__ import annotations

import argparse
import glob
import os
import os.path as osp
import time
import uuid
import warnings


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_CONFIG = osp.join(ROOT, "configs", "mmseg", "linear", "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py")
SEED = 0  # the distillation demo's seed: with no weight file, both build the same random DINOv3


def runs(brixel_file: str) -> dict:
    """label -> upsampler config"""
    return {"none (stride 16)": None, "bilinear 4x": dict(type="bilinear", factor=4),
            "BRIXEL 4x": dict(type="brixel", weights=brixel_file)}


from brixel_plugins.cli.errors import run_tool


def check_same_random_backbone(backbone, demo: str) -> str:
    """Compare our random DINOv3 with the one the BRIXEL weights were distilled on, if its checkpoint
    holds it; raise if they differ (the BRIXEL file would then be meaningless here)."""
    from brixel_plugins.files.checkpoints import load_checkpoint_file
    import torch

    for ckpt in sorted(glob.glob(osp.join(demo, "brixel", "*.pth")), key=osp.getmtime, reverse=True):
        state = load_checkpoint_file(ckpt)["state_dict"]  # weights_only, mmengine's classes allowed
        key = "backbone.model.patch_embed.proj.weight"
        if key in state:
            if not torch.equal(state[key], backbone.model.patch_embed.proj.weight):
                raise SystemExit(f"error: the random DINOv3 here differs from the one in {ckpt}; rerun "
                                 f"tools/demo.py, or set DINOV3_WEIGHTS for both demos")
            return f"same random init as the distillation ({osp.basename(ckpt)})"
    return "could not compare with the distillation's backbone (its checkpoints do not hold it)"


def train_probe(label, upsampler, data_root, weights, iters, demo, progress=None):
    from mmengine.config import Config
    from mmengine.registry import RUNNERS

    cfg = Config.fromfile(TOY_CONFIG)
    cfg.model.backbone.upsampler = upsampler
    cfg.model.backbone.weights = weights
    cfg.merge_from_dict({
        "train_dataloader.dataset.data_root": data_root, "val_dataloader.dataset.data_root": data_root,
        "test_dataloader.dataset.data_root": data_root,
        "train_cfg.max_iters": iters, "train_cfg.val_interval": iters, "default_hooks.checkpoint.interval": iters,
        "default_hooks.logger.interval": max(1, iters // 3),
    })
    cfg.randomness = dict(seed=SEED)
    cfg.work_dir = osp.join(demo, "segmentation", label.split()[0].lower())
    cfg.experiment_name = f"demo_seg_{uuid.uuid4().hex[:6]}"
    from brixel_plugins.cli.console import output_to
    from brixel_plugins.distill.demo import progress_hook

    with output_to(osp.join(cfg.work_dir, "train.log")):  # mmengine's log: the console keeps the tables
        runner = RUNNERS.build(cfg)
        runner.register_hook(progress_hook(label, iters, progress))
        note = "" if weights else check_same_random_backbone(runner.model.backbone.backbone, demo)
        t0 = time.time()
        runner.train()
    hub = runner.message_hub
    trained = (cfg, osp.join(cfg.work_dir, f"iter_{iters}.pth"))
    return dict(mIoU=float(hub.get_scalar("val/mIoU").current()),
                aAcc=float(hub.get_scalar("val/aAcc").current()),
                seconds_per_iter=float(hub.get_scalar("train/time").mean()),
                wall_seconds=round(time.time() - t0, 1), iterations=iters), note, trained


PICTURE_RUNS = ("bilinear 4x", "BRIXEL 4x")  # the runs drawn side by side
NUM_PICTURES = 6


ERROR_COLOUR = (255, 230, 0)  # wrong pixels in the error panels: no class of the toy data is yellow


def error_panel(image, classes, truth):
    """The pixels of ``classes`` that differ from ``truth`` (ignored label pixels excepted) in
    ``ERROR_COLOUR`` over the photo darkened to grey."""
    import numpy as np

    grey = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) * 0.45
    panel = np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8)
    panel[(classes != truth) & (truth != 255)] = ERROR_COLOUR
    return panel


def legend_panel(meta, size: int = 256):
    """A white panel with every class's colour and name, and the error colour."""
    import numpy as np

    from brixel_plugins.mmseg.inference import draw_legend

    entries = list(zip(meta["classes"], meta["palette"])) + [("wrong pixel", ERROR_COLOUR)]
    return draw_legend(np.full((size, size, 3), 255, np.uint8), entries)


def draw_predictions(trained, data_root: str, demo: str, scores=None) -> str:
    """The first validation pictures (never trained on): the picture, its label map and each run's
    prediction in solid class colours (as the label map: nothing of the photo shows through, so a
    better prediction looks better), and each run's wrong pixels; a legend row last. Per run, the
    class maps and overlays tools/infer.py would write. Returns the grid's path."""
    import numpy as np
    from PIL import Image

    from brixel_plugins.images import load_rgb
    from brixel_plugins.mmseg.inference import class_colours, load_segmentor, overlay, predict, save_class_map, save_rgb
    from brixel_plugins.visualize.pca import save_grid

    pictures = sorted(glob.glob(osp.join(data_root, "img_dir", "val", "*.png")))[:NUM_PICTURES]
    out = osp.join(demo, "segmentation", "pictures")
    models = {label: load_segmentor(cfg, checkpoint) for label, (cfg, checkpoint) in trained.items()}
    meta = next(iter(models.values())).dataset_meta
    rows = []
    wrong = {label: [0, 0] for label in models}
    for path in pictures:
        name = osp.splitext(osp.basename(path))[0]
        image = np.asarray(load_rgb(path))
        truth = np.asarray(Image.open(osp.join(data_root, "ann_dir", "val", name + ".png"))).astype(np.int64)
        row = [image, class_colours(truth, meta["palette"])]
        for label, model in models.items():
            classes = predict(model, image)
            run = label.split()[0].lower()
            save_class_map(classes, meta["palette"], osp.join(out, run, "maps", name + ".png"))
            save_rgb(overlay(image, classes, meta), osp.join(out, run, "overlays", name + ".png"))
            row += [class_colours(classes, meta["palette"]), error_panel(image, classes, truth)]
            wrong[label][0] += int(((classes != truth) & (truth != 255)).sum())
            wrong[label][1] += int((truth != 255).sum())
        rows.append(row)
    labels = ["picture", "label map"]
    for label in models:
        miou = f", mIoU {scores[label]:.1f}" if scores and label in scores else ""
        share = 100 * wrong[label][0] / max(1, wrong[label][1])
        labels += [f"{label}: prediction{miou}", f"{label}: wrong {share:.1f}%"]
    blank = np.full((256, 256, 3), 255, np.uint8)
    rows.append([legend_panel(meta)] + [blank] * (len(labels) - 1))
    grid = save_grid(rows, labels, osp.join(out, "predictions.png"))
    return str(grid)


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

    from brixel_plugins.toydata.segmentation import class_frequencies, write_toy_segmentation
    from brixel_plugins.common.filesystem import update_json

    torch.set_num_threads(args.threads)
    iters = args.iters
    weights = os.environ.get("DINOV3_WEIGHTS")
    from brixel_plugins.distill.demo import demo_weights, ensure_weights

    demo = osp.abspath(args.work_dir)
    brixel_file = demo_weights(demo)
    ensure_weights(brixel_file, ROOT, work_dir=demo)
    if not weights:
        print("!! No DINOV3_WEIGHTS: DINOv3 ViT-S is a RANDOM init (the distillation demo's); the table "
              "shows the machinery, not real features")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    data_root = str(write_toy_segmentation(osp.join(demo, "segmentation", "toy_shapes"), num_train=64,
                                           num_val=16, size=128, seed=0))
    freq = class_frequencies(data_root, "val")
    print(f"Toy shapes in {data_root}: 64 train / 16 val images, 128 px; val pixels: "
          + ", ".join(f"{c} {100 * f:.1f}%" for c, f in freq.items()))
    print(f"Linear probe (Dropout2d -> BN -> 1x1 conv) on frozen DINOv3 ViT-S, {iters} iterations of batch 8, "
          f"AdamW lr 1e-2, CPU\n")
    results, notes, trained = {}, set(), {}
    for label, upsampler in runs(brixel_file).items():
        print(f"  -- {label}: training ...", flush=True)
        results[label], note, trained[label] = train_probe(label, upsampler, data_root, weights, iters, demo,
                                                           args.progress)
        notes.add(note)
        r = results[label]
        print(f"  {label:<18} mIoU {r['mIoU']:6.2f}   {r['seconds_per_iter']:.3f} s/iter", flush=True)
    print("\n| features | mIoU | aAcc | s / iteration |\n|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['mIoU']:.2f} | {r['aAcc']:.2f} | {r['seconds_per_iter']:.3f} |")
    for note in sorted(n for n in notes if n):
        print(f"DINOv3: {note}")
    update_json(osp.join(demo, "summary.json"), "segmentation", dict(
        results=results, dinov3_weights=weights or "random init (seed 0)", dataset=dict(root=data_root, **freq),
        config=osp.relpath(TOY_CONFIG, ROOT), brixel_weights=brixel_file))
    print(f"Summary: {osp.join(demo, 'summary.json')} (key 'segmentation')")
    print("Training logs: " + ", ".join(osp.join(cfg.work_dir, "train.log") for cfg, _ in trained.values()))
    from brixel_plugins.cli.console import output_to

    with output_to(osp.join(demo, "segmentation", "pictures", "predict.log")):
        grid = draw_predictions({k: trained[k] for k in PICTURE_RUNS}, data_root, demo,
                                {k: results[k]["mIoU"] for k in PICTURE_RUNS})
    print(f"Predictions on held-out pictures ({' vs '.join(PICTURE_RUNS)}, tools/infer.py's code): {grid}")


if __name__ == "__main__":
    run_tool(main)
