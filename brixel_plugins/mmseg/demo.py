"""The segmentation demo (``tools/demo_seg.py``, part of ``make demo``): a linear probe on frozen DINOv3
ViT-S, trained on the toy shapes with no upsampler, with bilinear 4x, and with the BRIXEL weights the
distillation demo wrote; mIoU side by side.

The runs are the configs of ``configs/mmseg/demo/`` (:data:`RUNS`, in table order; each the toy
config ``configs/mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py`` with
its upsampler and a ``demo = dict(label=...)``), trained through the same code path as
``tools/train.py`` (mmengine Runner), on CPU. :func:`segmentation_demo` applies the demo's data,
schedule and seed to them. Without ``DINOV3_WEIGHTS`` the backbone is the same seeded random init the
distillation demo used (checked against its checkpoint when that holds the backbone).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import time
import uuid
import warnings
from typing import Dict, Optional

from ..common import packaged

SEED = 0  # the distillation demo's seed: with no weight file, both build the same random DINOv3
TOY_CONFIG = "mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"  # under configs/
# upsampler -> the run's config under configs/ (its work folder is the upsampler's name), in table order
RUNS = {m: f"mmseg/demo/linear_dinov3-vits16-{m}_1xb8-60it_toy-shapes-128x128.py"
        for m in ("none", "bilinear", "brixel")}
PICTURE_RUNS = ("bilinear", "brixel")  # the runs drawn side by side
NUM_PICTURES = 6
ERROR_COLOUR = (255, 230, 0)  # wrong pixels in the error panels: no class of the toy data is yellow


def run_config(run: str, brixel_file: str, data_root: str, weights: Optional[str], iters: int, demo: str):
    """The config of ``run`` (a key of :data:`RUNS`) on the demo's data, backbone (``weights``,
    None: the seeded random init), BRIXEL file and schedule, writing to ``demo/segmentation/<run>``."""
    from mmengine.config import Config

    cfg = Config.fromfile(packaged.config_file(RUNS[run]))
    if run == "brixel":
        cfg.model.backbone.upsampler.weights = brixel_file
    cfg.model.backbone.weights = weights
    cfg.merge_from_dict({
        "train_dataloader.dataset.data_root": data_root, "val_dataloader.dataset.data_root": data_root,
        "test_dataloader.dataset.data_root": data_root,
        "train_cfg.max_iters": iters, "train_cfg.val_interval": iters, "default_hooks.checkpoint.interval": iters,
        "default_hooks.logger.interval": max(1, iters // 3),
    })
    cfg.randomness = dict(seed=SEED)
    cfg.work_dir = osp.join(demo, "segmentation", run)
    cfg.experiment_name = f"demo_seg_{uuid.uuid4().hex[:6]}"
    return cfg


def train_probe(cfg, weights: Optional[str], demo: str, progress: Optional[int] = None):
    """Train ``cfg`` (:func:`run_config`); returns its scores, a note on the backbone and (cfg, checkpoint)."""
    from mmengine.registry import RUNNERS

    from ..cli.console import output_to
    from ..distill.demo import check_distilled_backbone, progress_hook

    iters = cfg.train_cfg.max_iters
    with output_to(osp.join(cfg.work_dir, "train.log")):  # mmengine's log: the console keeps the tables
        runner = RUNNERS.build(cfg)
        runner.register_hook(progress_hook(cfg.demo.label, iters, progress))
        note = "" if weights else check_distilled_backbone(runner.model.backbone.backbone, demo)
        t0 = time.time()
        runner.train()
    hub = runner.message_hub
    trained = (cfg, osp.join(cfg.work_dir, f"iter_{iters}.pth"))
    return dict(mIoU=float(hub.get_scalar("val/mIoU").current()),
                aAcc=float(hub.get_scalar("val/aAcc").current()),
                seconds_per_iter=float(hub.get_scalar("train/time").mean()),
                wall_seconds=round(time.time() - t0, 1), iterations=iters), note, trained


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

    from .inference import draw_legend

    entries = list(zip(meta["classes"], meta["palette"])) + [("wrong pixel", ERROR_COLOUR)]
    return draw_legend(np.full((size, size, 3), 255, np.uint8), entries)


def draw_predictions(trained: Dict[str, tuple], data_root: str, demo: str, scores=None) -> str:
    """The first validation pictures (never trained on): the picture, its label map and each run's
    prediction in solid class colours (as the label map: nothing of the photo shows through, so a
    better prediction looks better), and each run's wrong pixels; a legend row last. ``trained``:
    label -> (cfg, checkpoint). Per run, the class maps and overlays tools/infer.py would write.
    Returns the grid's path."""
    import numpy as np
    from PIL import Image

    from ..images import load_rgb
    from ..visualize.pca import save_grid
    from .inference import class_colours, load_segmentor, overlay, predict, save_class_map, save_rgb

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


def segmentation_demo(work_dir: str, iters: int = 60, progress: Optional[int] = None) -> dict:
    """The segmentation demo: every run of :data:`RUNS` for ``iters`` iterations on the toy shapes
    under ``work_dir/segmentation/``, the table, the key "segmentation" of ``work_dir/summary.json``
    and the picture ``segmentation/pictures/predictions.png``; BRIXEL's weights are the distillation
    demo's under ``work_dir/brixel/`` (distilled first when missing). ``progress``: a progress line
    every N iterations (default a tenth of each run). Returns the scores per run label."""
    from ..cli.console import output_to
    from ..common.filesystem import update_json
    from ..distill.demo import ensure_weights
    from ..toydata.segmentation import class_frequencies, write_toy_segmentation

    weights = os.environ.get("DINOV3_WEIGHTS")
    demo = osp.abspath(work_dir)
    brixel_file = ensure_weights(demo)
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
    results, notes, trained, labels = {}, set(), {}, {}
    for run in RUNS:
        cfg = run_config(run, brixel_file, data_root, weights, iters, demo)
        label = labels[run] = cfg.demo.label
        print(f"  -- {label}: training ...", flush=True)
        results[label], note, trained[label] = train_probe(cfg, weights, demo, progress)
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
        config=osp.join("configs", TOY_CONFIG), brixel_weights=brixel_file))
    print(f"Summary: {osp.join(demo, 'summary.json')} (key 'segmentation')")
    print("Training logs: " + ", ".join(osp.join(cfg.work_dir, "train.log") for cfg, _ in trained.values()))
    drawn = [labels[run] for run in PICTURE_RUNS]
    with output_to(osp.join(demo, "segmentation", "pictures", "predict.log")):
        grid = draw_predictions({k: trained[k] for k in drawn}, data_root, demo, {k: results[k]["mIoU"] for k in drawn})
    print(f"Predictions on held-out pictures ({' vs '.join(drawn)}, tools/infer.py's code): {grid}")
    return results
