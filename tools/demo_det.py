"""Detection part of ``make demo``: toy Mask R-CNN (ViTDet) over frozen DINOv3-S, bilinear vs BRIXEL.

Trains the toy configs (configs/d2/toy/, the COCO configs' detector on 128 px toy images of small
and thin textured shapes, see brixel_plugins/toydata/instances.py) once per upsampler, on CPU,
with detectron2's trainer, then scores the held-out split with ``COCOEvaluator``: box and mask AP
side by side, plus seconds per training iteration. The BRIXEL weights are the distillation
demo's (work_dirs/demo/brixel/best_upsampler.safetensors; when missing, this runs
``tools/demo.py --methods brixel`` first). Results go to the key "detection" of
work_dirs/demo/summary.json.

``DINOV3_WEIGHTS=path`` uses real ViT-S weights; without it the backbone is the distillation
demo's random init (seed 0, rebuilt here and checked against the BRIXEL file), and the numbers
only show that the machinery works. Torch uses 2 threads, or ``OMP_NUM_THREADS`` when set. ``--iters N`` (or ``DEMO_DET_ITERS``) sets the iterations (default 400: at 60 neither detector learns anything, AP ~0.05%; at 400, ~2.5 min per upsampler on 2 cores, AP reaches a few %).

    .venv/bin/python tools/demo_det.py
"""
from __future__ import annotations

import json
import os
import os.path as osp
import shutil
import time
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

DEMO = osp.join(ROOT, "work_dirs", "demo")
BRIXEL = osp.join(DEMO, "brixel", "best_upsampler.safetensors")
WORK = osp.join(DEMO, "detection")
METHODS = ("bilinear", "brixel")

from brixel_plugins.cli import run_tool


def backbone_weights() -> str:
    """DINOV3_WEIGHTS, or the distillation demo's random-init ViT-S (seeded 0 before it is built,
    as the distillation runner does) written to a file, so the detector loads it like real weights."""
    import torch

    from brixel_plugins.backbones import FrozenDINOv3

    if os.environ.get("DINOV3_WEIGHTS"):
        return os.environ["DINOV3_WEIGHTS"]
    path = osp.join(WORK, "dinov3_vits16_random_seed0.pth")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.save(FrozenDINOv3("vits16").model.state_dict(), path)
    return path


def brixel_fit(weights: str) -> dict:
    """Does the BRIXEL file fit this backbone? Relative L1 error against DINOv3 at 4x the
    resolution (a toy validation image at 96 px in, 384 px teacher), BRIXEL vs bilinear, scored
    as the distillation's validation scores them."""
    import numpy as np
    from PIL import Image

    from brixel_plugins.backbones import FrozenDINOv3
    from brixel_plugins.distill.metrics import relative_l1
    from brixel_plugins.distill.model import held_out_maps
    from brixel_plugins.images import normalise, to_tensor
    from brixel_plugins.io import load_upsampler
    from brixel_plugins.toydata.instances import split_files

    backbone = FrozenDINOv3("vits16", weights)
    up = load_upsampler(BRIXEL, backbone.spec).eval()
    _, images = split_files(osp.join(WORK, "toydata"), "val")
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


def toy_config(method: str, weights: str, iters: int):
    """The toy detector config of ``method`` on the demo's data and backbone, writing to WORK/method."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(osp.join(ROOT, "configs", "d2", "toy", f"mask_rcnn_dinov3_vits16_{method}_toy.py"))
    cfg.model.backbone.net.weights = weights
    if method == "brixel":
        cfg.model.backbone.net.upsampler_weights = BRIXEL
    for split in ("train", "test"):
        cfg.dataloader[split].dataset.names.root = osp.join(WORK, "toydata")
    cfg.train.update(output_dir=osp.join(WORK, method), max_iter=iters, eval_period=iters,
                     checkpointer=dict(period=iters, max_to_keep=1))
    return cfg


def train_one(method: str, weights: str, iters: int) -> dict:
    from detectron2.utils.env import seed_all_rng

    from brixel_plugins.console import output_to
    from brixel_plugins.d2 import engine

    cfg = toy_config(method, weights, iters)
    out = cfg.train.output_dir
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    seed_all_rng(0)
    t0 = time.time()
    with output_to(osp.join(out, "train.log")):  # detectron2's logs and COCOeval's tables
        results = engine.train(cfg)
    wall = time.time() - t0
    return {"box_AP": results["bbox"]["AP"], "box_APs": results["bbox"]["APs"],
            "mask_AP": results["segm"]["AP"], "mask_APs": results["segm"]["APs"],
            "seconds_per_iter": seconds_per_iteration(out), "wall_seconds": wall}


NUM_PICTURES = 6
DRAW_THRESHOLD = 0.3  # lowest score drawn: the toy detectors' scores stay low after a few hundred steps


def draw_detections(configs) -> str:
    """The first validation pictures (never trained on) with their annotations and each
    detector's detections (score >= DRAW_THRESHOLD) drawn by detectron2's Visualizer, side by
    side in one grid, through tools/d2_infer.py's predictor. Returns the grid's path."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from detectron2.utils.visualizer import Visualizer

    from brixel_plugins.d2.predictor import LazyPredictor
    from brixel_plugins.images import load_rgb
    from brixel_plugins.pca import save_grid

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
    return str(save_grid(rows, labels, osp.join(WORK, "pictures", "detections.png")))


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Toy Mask R-CNN on frozen DINOv3-S: bilinear vs BRIXEL (box/mask AP)")
    p.add_argument("--iters", type=int, default=int(os.environ.get("DEMO_DET_ITERS", 400)),
                   help="training iterations per upsampler (default 400, or $DEMO_DET_ITERS)")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f"--iters must be >= 1, got {args.iters}")
    return args


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.utils import hide_stack_notices

    hide_stack_notices()
    import torch

    from brixel_plugins.d2 import toy_instances
    from brixel_plugins.utils import update_json

    from detectron2.utils.logger import setup_logger

    # 2 threads (the demo's CPU budget), or OMP_NUM_THREADS when the caller sets it (e.g. 1 beside other jobs)
    torch.set_num_threads(int((os.environ.get("OMP_NUM_THREADS") or "0").split(",")[0]) or max(1, min(2, os.cpu_count() or 1)))
    setup_logger(name="detectron2")  # its output goes to each run's train.log (train_one)
    iters = args.iters
    from brixel_plugins.distill.demo import ensure_weights

    ensure_weights(BRIXEL, ROOT)
    os.makedirs(WORK, exist_ok=True)
    toy_instances("train", root=osp.join(WORK, "toydata"))
    weights = backbone_weights()
    if not os.environ.get("DINOV3_WEIGHTS"):
        print("!! No DINOV3_WEIGHTS: DINOv3 ViT-S is the distillation demo's RANDOM init; the table shows the "
              "machinery, not real features. Set DINOV3_WEIGHTS=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    fit = brixel_fit(weights)
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
        rows[method] = train_one(method, weights, iters)
    head = f"{'upsampler':<10} {'box AP':>7} {'box APs':>8} {'mask AP':>8} {'mask APs':>9} {'s/iter':>7}"
    print("\nDetection (toy, held-out split; AP in %, APs: objects < 32^2 px):\n" + head)
    for method, r in rows.items():
        print(f"{method:<10} {r['box_AP']:7.2f} {r['box_APs']:8.2f} {r['mask_AP']:8.2f} {r['mask_APs']:9.2f} "
              f"{r['seconds_per_iter']:7.2f}")
    update_json(osp.join(DEMO, "summary.json"), "detection", {
        "iterations": iters, "image_size": 128, "batch": 4, "backbone": "vits16",
        "backbone_weights": os.environ.get("DINOV3_WEIGHTS") or "random init (seed 0)",
        "brixel_fit_rel_l1": fit, "results": rows})
    print(f"summary: {osp.join(DEMO, 'summary.json')} (key 'detection')")
    print("Training and evaluation logs: " + ", ".join(osp.join(WORK, m, "train.log") for m in METHODS))
    from brixel_plugins.console import output_to

    with output_to(osp.join(WORK, "pictures", "predict.log")):
        grid = draw_detections({m: toy_config(m, weights, iters) for m in METHODS})
    print(f"Detections on held-out pictures ({' vs '.join(METHODS)}, tools/d2_infer.py's code): {grid}")


if __name__ == "__main__":
    run_tool(main)
