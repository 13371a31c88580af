"""The detection demo (``tools/demo_det.py``, part of ``make demo``): toy Mask R-CNN (ViTDet) over
frozen DINOv3-S, bilinear vs BRIXEL.

The runs are the toy configs ``configs/d2/toy/mask_rcnn_dinov3_vits16_<method>_toy.py`` (:data:`METHODS`,
in table order), trained once per upsampler with detectron2's trainer on the demo's data, backbone and
schedule (:func:`toy_config`), then scored on the held-out split by ``COCOEvaluator``. Without
``DINOV3_WEIGHTS`` the backbone is the distillation demo's random init, written to a file
(:func:`backbone_weights`) so the detector loads it like real weights.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import shutil
import time
import warnings
from typing import Optional

from ..common import packaged

METHODS = ("bilinear", "brixel")
NUM_PICTURES = 6
DRAW_THRESHOLD = 0.3  # lowest score drawn: the toy detectors' scores stay low after a few hundred steps


def backbone_weights(work: str) -> str:
    """DINOV3_WEIGHTS, or the distillation demo's random-init ViT-S (seeded 0 before it is built,
    as the distillation runner does) written to a file, so the detector loads it like real weights."""
    import torch

    from ..backbones import FrozenDINOv3

    if os.environ.get("DINOV3_WEIGHTS"):
        return os.environ["DINOV3_WEIGHTS"]
    path = osp.join(work, "dinov3_vits16_random_seed0.pth")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(FrozenDINOv3("vits16").model.state_dict(), path)
    return path


def brixel_fit(weights: str, work: str, brixel: str) -> dict:
    """Does the BRIXEL file fit this backbone? Relative L1 error against DINOv3 at 4x the
    resolution (a toy validation image at 96 px in, 384 px teacher), BRIXEL vs bilinear, scored
    as the distillation's validation scores them."""
    import numpy as np
    from PIL import Image

    from ..backbones import FrozenDINOv3
    from ..distill.metrics import relative_l1
    from ..distill.model import held_out_maps
    from ..files.upsampler_file import load_upsampler
    from ..images import normalise, to_tensor
    from ..toydata.instances import split_files

    backbone = FrozenDINOv3("vits16", weights)
    up = load_upsampler(brixel, backbone.spec).eval()
    _, images = split_files(osp.join(work, "toydata"), "val")
    x = normalise(to_tensor(np.array(Image.open(sorted(images.iterdir())[0]).convert("RGB"))))
    pred, bilinear, target = held_out_maps(backbone, up, x, student_size=96)
    return {"brixel": relative_l1(pred, target), "bilinear": relative_l1(bilinear, target)}


def seconds_per_iteration(output_dir: str) -> float:
    """Mean of detectron2's per-iteration ``time`` (data excluded) over the logged windows."""
    times = []
    with open(osp.join(output_dir, "metrics.json")) as f:
        for line in f:
            rec = json.loads(line)
            if "time" in rec:
                times.append(rec["time"])
    return sum(times) / len(times)


def toy_config(method: str, weights: str, iters: int, work: str, brixel: str):
    """The toy detector config of ``method`` on the demo's data and backbone, writing to ``work/method``."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(packaged.config_file(f"d2/toy/mask_rcnn_dinov3_vits16_{method}_toy.py"))
    cfg.model.backbone.net.weights = weights
    if method == "brixel":
        cfg.model.backbone.net.upsampler.weights = brixel
    for split in ("train", "test"):
        cfg.dataloader[split].dataset.names.root = osp.join(work, "toydata")
    # both tasks always: COCOEvaluator guesses them from the predictions otherwise, and a detector
    # that finds nothing (early in training) returned no "segm" results at all
    cfg.dataloader.evaluator.tasks = ("bbox", "segm")
    cfg.train.update(output_dir=osp.join(work, method), max_iter=iters, eval_period=iters,
                     checkpointer=dict(period=iters, max_to_keep=1))
    return cfg


def progress_hook(label: str, total: int, every=None):
    """A detectron2 hook saying training progress on the console (``console.Progress``)."""
    from detectron2.engine import HookBase

    from ..cli.console import Progress

    class ProgressHook(HookBase):
        def __init__(self):
            self.progress = Progress(label, total, every)

        def after_step(self):
            history = self.trainer.storage.histories().get("total_loss")
            self.progress.step(self.trainer.iter + 1, history.latest() if history is not None else None)

    return ProgressHook()


def found_nothing(results: dict) -> bool:
    """COCOEvaluator's results of a detector that detected nothing: every metric NaN."""
    return all(math.isnan(v) for v in results["bbox"].values())


def ap(results: dict, task: str, key: str) -> float:
    """An AP of COCOEvaluator's results; a detector that detected nothing (every metric NaN) scores
    0, as COCO scores a detector that finds none of the objects."""
    return 0.0 if found_nothing(results) else results[task][key]


def train_one(method: str, weights: str, iters: int, work: str, brixel: str, progress=None) -> dict:
    from detectron2.utils.env import seed_all_rng

    from ..cli.console import output_to
    from . import engine

    cfg = toy_config(method, weights, iters, work, brixel)
    out = cfg.train.output_dir
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    seed_all_rng(0)
    t0 = time.time()
    with output_to(osp.join(out, "train.log")):  # detectron2's logs and COCOeval's tables
        results = engine.train(cfg, extra_hooks=[progress_hook(method, iters, progress)])
    wall = time.time() - t0
    return {"box_AP": ap(results, "bbox", "AP"), "box_APs": ap(results, "bbox", "APs"),
            "mask_AP": ap(results, "segm", "AP"), "mask_APs": ap(results, "segm", "APs"),
            "detections": not found_nothing(results),
            "seconds_per_iter": seconds_per_iteration(out), "wall_seconds": wall}


def draw_detections(configs, work: str) -> str:
    """The first validation pictures (never trained on) with their annotations and each
    detector's detections (score >= DRAW_THRESHOLD) drawn by detectron2's Visualizer, side by
    side in one grid, through tools/d2_infer.py's predictor. Returns the grid's path."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from detectron2.utils.visualizer import Visualizer

    from ..images import load_rgb
    from ..visualize.pca import save_grid
    from .predictor import LazyPredictor

    predictors = {m: LazyPredictor(cfg, osp.join(cfg.train.output_dir, "model_final.pth"), device="cpu",
                                   input_format="RGB")  # load_rgb arrays
                  for m, cfg in configs.items()}
    meta = next(iter(predictors.values())).metadata
    records = DatasetCatalog.get(meta.name)[:NUM_PICTURES]
    rows = []
    for record in records:
        image = np.asarray(load_rgb(record["file_name"]))
        row = [image, Visualizer(image, meta, scale=2.0).draw_dataset_dict(record).get_image()]
        for predictor in predictors.values():
            found = predictor(image)
            found = found[found.scores >= DRAW_THRESHOLD].to("cpu")
            row.append(Visualizer(image, meta, scale=2.0).draw_instance_predictions(found).get_image())
        rows.append(row)
    labels = ["picture", "annotations", *(f"{m} (score >= {DRAW_THRESHOLD})" for m in predictors)]
    return str(save_grid(rows, labels, osp.join(work, "pictures", "detections.png")))


def detection_demo(work_dir: str, iters: int = 400, progress: Optional[int] = None) -> dict:
    """The detection demo: one toy detector per :data:`METHODS` for ``iters`` iterations under
    ``work_dir/detection/``, the table, the key "detection" of ``work_dir/summary.json`` and the
    picture ``detection/pictures/detections.png``; BRIXEL's weights are the distillation demo's
    under ``work_dir/brixel/`` (distilled first when missing). ``progress``: a progress line every N
    iterations (default a tenth of each run). Returns the scores per method."""
    from detectron2.utils.logger import setup_logger

    from ..cli.console import output_to
    from ..common.filesystem import update_json
    from ..distill.demo import ensure_weights
    from . import toy_instances

    setup_logger(name="detectron2")  # its output goes to each run's train.log (train_one)
    demo = osp.abspath(work_dir)
    work = osp.join(demo, "detection")
    brixel = ensure_weights(demo)
    os.makedirs(work, exist_ok=True)
    toy_instances("train", root=osp.join(work, "toydata"))
    weights = backbone_weights(work)
    if not os.environ.get("DINOV3_WEIGHTS"):
        print("!! No DINOV3_WEIGHTS: DINOv3 ViT-S is the distillation demo's RANDOM init; the table shows the "
              "machinery, not real features. Set DINOV3_WEIGHTS=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    fit = brixel_fit(weights, work, brixel)
    print(f"BRIXEL file vs this backbone: relative L1 to DINOv3 at 4x resolution {fit['brixel']:.3f} "
          f"(bilinear {fit['bilinear']:.3f})")
    if fit["brixel"] >= fit["bilinear"]:
        print("!! the BRIXEL weights do not beat bilinear on this backbone: they were distilled for another "
              "DINOv3 (run tools/demo.py --methods brixel with the same DINOV3_WEIGHTS)")
    print(f"Toy Mask R-CNN (ViTDet heads, frozen DINOv3-S, 128 px, batch 4, {iters} iterations, CPU) per upsampler; "
          f"held-out split scored by COCOEvaluator", flush=True)
    rows = {}
    for method in METHODS:
        print(f"-- training with {method} ...", flush=True)
        rows[method] = train_one(method, weights, iters, work, brixel, progress)
    head = f"{'upsampler':<10} {'box AP':>7} {'box APs':>8} {'mask AP':>8} {'mask APs':>9} {'s/iter':>7}"
    print("\nDetection (toy, held-out split; AP in %, APs: objects < 32^2 px):\n" + head)
    for method, r in rows.items():
        print(f"{method:<10} {r['box_AP']:7.2f} {r['box_APs']:8.2f} {r['mask_AP']:8.2f} {r['mask_APs']:9.2f} "
              f"{r['seconds_per_iter']:7.2f}" + ("" if r["detections"] else "   (no detections: AP 0)"))
    update_json(osp.join(demo, "summary.json"), "detection", {
        "iterations": iters, "image_size": 128, "batch": 4, "backbone": "vits16",
        "backbone_weights": os.environ.get("DINOV3_WEIGHTS") or "random init (seed 0)",
        "brixel_fit_rel_l1": fit, "results": rows})
    print(f"summary: {osp.join(demo, 'summary.json')} (key 'detection')")
    print("Training and evaluation logs: " + ", ".join(osp.join(work, m, "train.log") for m in METHODS))
    with output_to(osp.join(work, "pictures", "predict.log")):
        grid = draw_detections({m: toy_config(m, weights, iters, work, brixel) for m in METHODS}, work)
    print(f"Detections on held-out pictures ({' vs '.join(METHODS)}, tools/d2_infer.py's code): {grid}")
    return rows
