"""Hooks: export upsampler-only weights (best by validation loss, and last) with the metadata the
MMSeg / Detectron2 configs rely on, print the held-out table, and fit PHI-S before training."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, Optional

import torch
from mmengine.dist import all_reduce, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..images import normalise, resize
from ..io import save_upsampler
from ..utils import atomic_path
from .metrics import format_table
from .registry import HOOKS


def unwrap(model):
    return model.module if is_model_wrapper(model) else model


def export_metadata(runner, model, metrics: Optional[Dict[str, float]], kind: str) -> dict:
    ds = runner.train_dataloader.dataset
    return {
        "method": model.method,
        "backbone": model.backbone.spec.arch,
        "backbone_weights": Path(model.backbone.weights).name if model.backbone.weights else None,
        "factor": model.upsampler.factor,
        "student_resolution": model.student_size,
        "teacher_resolution": model.student_size * model.upsampler.factor,
        "train_images": len(ds),
        "iterations": runner.iter,
        "objective": model.kind,
        "checkpoint": kind,
        "val_metrics": metrics or {},
    }


@HOOKS.register_module()
class ExportUpsamplerHook(Hook):
    """After each validation: table to the log, JSON history to ``work_dir/val_metrics.json``,
    ``best_upsampler.safetensors`` when the validation loss improves; after training
    ``upsampler.safetensors`` (the last weights). Upsampler parameters and buffers only."""

    priority = "LOW"

    def __init__(self, best_name: str = "best_upsampler.safetensors", last_name: str = "upsampler.safetensors"):
        self.best_name, self.last_name = best_name, last_name
        self.last_metrics: Optional[Dict[str, float]] = None

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if not metrics or not is_main_process():
            return
        model = unwrap(runner.model)
        m = {k.split("/", 1)[1] if k.startswith("distill/") else k: float(v) for k, v in metrics.items()}
        m["iteration"] = runner.iter
        self.last_metrics = m
        runner.logger.info(f"held-out images vs DINOv3 at {model.student_size * model.upsampler.factor} px "
                           f"(student {model.student_size} px), iteration {runner.iter}:\n"
                           + format_table(m, model.method))
        hist_path = Path(runner.work_dir) / "val_metrics.json"
        history = json.loads(hist_path.read_text()) if hist_path.is_file() else []
        history = [h for h in history if h.get("iteration", -1) < runner.iter] + [m]
        with atomic_path(hist_path) as tmp:
            tmp.write_text(json.dumps(history, indent=1))
        best = runner.message_hub.get_info("distill_best_val_loss", math.inf)  # saved in checkpoints
        if m["loss"] < best:
            runner.message_hub.update_info("distill_best_val_loss", m["loss"])
            path = Path(runner.work_dir) / self.best_name
            save_upsampler(path, model.upsampler, export_metadata(runner, model, m, "best"))
            runner.logger.info(f"new best validation loss {m['loss']:.5f}: wrote {path}")

    def after_train(self, runner) -> None:
        if not is_main_process():
            return
        model = unwrap(runner.model)
        path = Path(runner.work_dir) / self.last_name
        save_upsampler(path, model.upsampler, export_metadata(runner, model, self.last_metrics, "last"))
        runner.logger.info(f"wrote upsampler weights {path}")


@HOOKS.register_module()
class PhiSStatsHook(Hook):
    """Before training (multi-view objective): stream the backbone's features of ``num_batches``
    training batches at the student resolution, fit PHI-S (float64 mean/covariance, summed over
    ranks) and store it in the model (and the upsampler, if it holds a PHI-S of its own).
    Skipped when the checkpoint being resumed already holds fitted statistics."""

    priority = "HIGH"

    def __init__(self, num_batches: int = 50):
        self.num_batches = int(num_batches)

    def before_train(self, runner) -> None:
        model = unwrap(runner.model)
        phi = getattr(model, "phi_s", None)
        if phi is None or bool(phi.fitted):
            return

        dev = next(model.upsampler.parameters(), torch.zeros(0)).device
        phi.reset()
        sampler = runner.train_dataloader.sampler
        sampler.set_epoch(10 ** 6)  # a pass of its own: the training epochs' order is untouched
        with torch.no_grad():
            for k, batch in enumerate(runner.train_dataloader):
                if k >= self.num_batches:
                    break
                img = resize(normalise(batch["image"].to(dev)), model.student_size)
                phi.update(model.backbone.last_layer(img))
        count, s1, s2 = phi.statistics()
        n = torch.tensor(float(count), dtype=torch.float64, device=s1.device)
        for t in (n, s1, s2):
            all_reduce(t)  # sums over ranks, so every rank fits the same transform
        phi.set_statistics(int(n.item()), s1, s2)
        phi.fit()
        phi.reset()
        print_log(f"PHI-S fitted on {int(n.item())} feature vectors", logger="current", level=logging.INFO)
