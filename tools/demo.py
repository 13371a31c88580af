"""The embedded default (``make demo``): a short BRIXEL distillation for DINOv3 ViT-S on the photos
bundled with scikit-image, on CPU, then the held-out table (BRIXEL vs bilinear) and a PCA picture.

Same code path as ``tools/distill.py`` (mmengine Runner, configs/distill/brixel_vits16.py, a
training folder and a validation folder) with a schedule a CPU finishes in minutes: the release
trains with a 1024 px teacher and 256 px student (one ViT-S pass at 1024 px takes ~9 s on 2
cores); the demo keeps the 4x ratio at 384 / 96 px, batch 2, ``DEMO_ITERS`` iterations (default
400, ~1.3 it/s on 2 cores) on random crops and flips of the bundled photos, with three natural
colour photos (chelsea, coffee, rocket) held out. ``DINOV3_WEIGHTS=path`` uses real weights;
without it the backbone is a random init (said loudly: the numbers then only show that the
machinery works).
"""
from __future__ import annotations

import json
import os
import shutil
import os.path as osp
import sys
import time
import uuid
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


HELD_OUT = ("chelsea.png", "coffee.png", "rocket.jpg")


def photo_folders(root: str):
    """Link scikit-image's bundled photos into ``root/train`` and ``root/val`` (held out): the
    demo reads them the way a user's run reads a training and a validation folder."""
    from brixel_plugins.distill.data import skimage_photo_files

    train, val = osp.join(root, "train"), osp.join(root, "val")
    os.makedirs(train), os.makedirs(val)
    for f in skimage_photo_files():
        os.symlink(f, osp.join(val if osp.basename(f) in HELD_OUT else train, osp.basename(f)))
    return train, val


def main():
    import torch
    from mmengine.config import Config

    from brixel_plugins.distill.metrics import format_table
    from brixel_plugins.distill.runner import DistillRunner

    iters = int(os.environ.get("DEMO_ITERS", 400))
    teacher, student = 384, 96
    work = osp.join(ROOT, "work_dirs", "demo")
    if osp.isdir(work):
        shutil.rmtree(work)  # a fresh run: no stale checkpoints or best-model files
    train_dir, val_dir = photo_folders(osp.join(work, "photos"))
    weights = os.environ.get("DINOV3_WEIGHTS")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if weights:
        print(f"DINOv3 ViT-S weights: {weights}")
    else:
        print("!! No DINOV3_WEIGHTS: using a RANDOM-INIT DINOv3 ViT-S backbone. The table shows the "
              "machinery, not real features; set DINOV3_WEIGHTS=/path/to/dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
        warnings.filterwarnings("ignore", message=".*RANDOM init.*")
    print(f"Demo schedule: BRIXEL for ViT-S, teacher {teacher} px / student {student} px (release: 1024 / 256), "
          f"batch 2, {iters} iterations, Adam lr 1e-4 for the first epoch then 1e-3, random crops + flips of "
          f"the scikit-image photos in {train_dir}, held out: {', '.join(sorted(os.listdir(val_dir)))}; CPU.")

    cfg = Config.fromfile(osp.join(ROOT, "configs", "distill", "brixel_vits16.py"))
    data = dict(root=train_dir, val_root=val_dir, size=teacher)
    cfg.merge_from_dict({
        "model.backbone": dict(arch="vits16", weights=weights, autocast="bf16"),
        "model.teacher_size": teacher, "model.student_size": student,
        "train_dataloader": dict(batch_size=2, num_workers=0, persistent_workers=False,
                                 dataset=dict(data, split="train", crop="random", scale=(0.4, 1.0))),
        "val_dataloader": dict(batch_size=1, num_workers=0, persistent_workers=False,
                               dataset=dict(data, split="val", crop="center")),
        "train_cfg": dict(_delete_=True, type="DistillLoop", max_iters=iters, val_interval=iters),
        "default_hooks.checkpoint.interval": max(1, iters // 2),
        "default_hooks.logger.interval": 10,
        "visualizer.vis_backends": [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
        "env_cfg.dist_cfg.backend": "gloo",
    })
    cfg.work_dir = work
    cfg.experiment_name = f"demo_{uuid.uuid4().hex[:6]}"
    cfg.log_level = "INFO"
    runner = DistillRunner.from_cfg(cfg)
    t0 = time.time()
    runner.train()
    elapsed = time.time() - t0
    model = runner.model
    hist = json.loads(open(osp.join(work, "val_metrics.json")).read())
    print(f"\nHeld-out photos ({int(hist[-1]['num_images'])}), vs DINOv3 at {teacher} px; "
          f"student input {student} px, {iters} iterations:")
    print(format_table(hist[-1], "BRIXEL"))
    print(f"Training: {iters} iterations in {elapsed:.0f} s (incl. validation) = {iters / elapsed:.3f} it/s")

    # picture: input, DINOv3 at 256, DINOv3 at 1024, BRIXEL at 256, one row per held-out photo
    from brixel_plugins.images import normalise, resize
    from brixel_plugins.viz import pca_row, save_grid

    rows = []
    val_set = runner.val_dataloader.dataset
    for i in range(len(val_set)):
        img = normalise(val_set[i]["image"][None])
        with torch.no_grad():
            x256 = resize(img, 256)
            low = model.backbone.last_layer(x256)[0]
            high = model.backbone.last_layer(resize(img, 1024))[0]
            brixel = model.upsample(x256)[0]
        rows.append(pca_row(high, [low, high, brixel], image=x256[0]))
    path = save_grid(rows, ["input", "DINOv3 @256", "DINOv3 @1024", "BRIXEL @256"],
                     osp.join(work, "demo_pca.png"))
    print(f"PCA picture: {path}")
    print(f"Upsampler weights: {osp.join(work, 'best_upsampler.safetensors')} (best), "
          f"{osp.join(work, 'upsampler.safetensors')} (last)")


if __name__ == "__main__":
    main()
