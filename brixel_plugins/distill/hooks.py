"""Hooks: export upsampler-only weights (best by validation loss, and last) with the metadata the
MMSeg / Detectron2 configs rely on, print the held-out table, report undecodable images, and fit
PHI-S before training."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_gather_object, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..common.filesystem import atomic_path
from ..engine import unwrap_model
from ..files.upsampler_file import save_upsampler
from ..images import normalise, resize
from .metrics import format_table
from .registry import HOOKS

# message-hub key (saved in checkpoints): {path: reason} of training images that failed to decode
UNDECODABLE = "distill_undecodable_images"


def export_metadata(runner, model, metrics: Optional[Dict[str, float]], kind: str) -> dict:
    ds = runner.train_dataloader.dataset
    undecodable = runner.message_hub.get_info(UNDECODABLE, {})
    return {
        "method": model.method,
        "backbone": model.backbone.spec.arch,
        "backbone_weights": Path(model.backbone.weights).name if model.backbone.weights else None,
        "factor": model.upsampler.factor,
        "student_resolution": model.student_size,
        "teacher_resolution": model.student_size * model.upsampler.factor,
        "train_images": len(ds) - len(undecodable),  # readable images only
        "iterations": runner.iter,
        "objective": model.objective_cfg,
        "checkpoint": kind,
        "val_metrics": metrics or {},
    }


@HOOKS.register_module()
class ExportUpsamplerHook(Hook):
    """After each validation: table to the log, JSON history to ``work_dir/val_metrics.json``,
    ``best_upsampler.safetensors`` when the validation loss improves; after training
    ``upsampler.safetensors`` (the last weights). Upsampler parameters and buffers only.

    Each export is one atomic file holding its weights and the validation metrics of those
    weights. A run killed after its last checkpoint (during the final validation or the export)
    resumes at the end with no metrics in memory: the export then validates again first, so the
    file never lands without them."""

    priority = "LOW"

    def __init__(self, best_name: str = "best_upsampler.safetensors", last_name: str = "upsampler.safetensors"):
        self.best_name, self.last_name = best_name, last_name
        self.last_metrics: Optional[Dict[str, float]] = None
        self.validated_at: Optional[int] = None  # iteration of the last validation, on every rank

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self.validated_at = runner.iter
        if not metrics or not is_main_process():
            return
        model = unwrap_model(runner.model)
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
        if not math.isfinite(m["loss"]):
            runner.logger.warning(f"validation loss is {m['loss']} at iteration {runner.iter}: no best export")
        best = runner.message_hub.get_info("distill_best_val_loss", math.inf)  # saved in checkpoints
        if m["loss"] < best:
            runner.message_hub.update_info("distill_best_val_loss", m["loss"])
            path = Path(runner.work_dir) / self.best_name
            save_upsampler(path, model.upsampler, export_metadata(runner, model, m, "best"))
            runner.logger.info(f"new best validation loss {m['loss']:.5f}: wrote {path}")

    def after_train(self, runner) -> None:
        if (self.validated_at != runner.iter and runner.val_loop is not None
                and runner.iter >= getattr(runner.train_loop, "val_begin", 1)):
            runner.val_loop.run()  # every rank: validation is distributed
        if not is_main_process():
            return
        model = unwrap_model(runner.model)
        path = Path(runner.work_dir) / self.last_name
        save_upsampler(path, model.upsampler, export_metadata(runner, model, self.last_metrics, "last"))
        runner.logger.info(f"wrote upsampler weights {path}")


@HOOKS.register_module()
class SkippedImagesHook(Hook):
    """Reports the image files that failed to decode while reading (ImageFolderDataset replaced each
    with the next readable image), once: at the end of the training epoch that met them (validation:
    after the validation). Training ones are kept in the message hub, so exports count readable
    images only, also after a resume. Files that do not open at all are left out when the dataset
    is built (and said so then)."""

    priority = "BELOW_NORMAL"

    def __init__(self):
        self.pending: Dict[str, List[str]] = {"train": [], "val": []}
        self.reported_val: Dict[str, str] = {}

    def _collect(self, mode: str, data_batch) -> None:
        if isinstance(data_batch, dict):
            self.pending[mode] += [e for entry in data_batch.get("unreadable", []) for e in entry.split("\n") if e]

    def _report(self, runner, mode: str, when: str) -> None:
        found = [e for part in all_gather_object(self.pending[mode]) for e in part]  # every rank's
        self.pending[mode] = []
        known = runner.message_hub.get_info(UNDECODABLE, {}) if mode == "train" else self.reported_val
        new = {}
        for entry in found:
            path, _, reason = entry.partition("\t")
            if path not in known:
                new.setdefault(path, reason)
        if not new:
            return
        if mode == "train":
            runner.message_hub.update_info(UNDECODABLE, {**known, **new})
        else:
            self.reported_val.update(new)
        runner.logger.warning(f"{when}: {len(new)} image file(s) could not be decoded; each was replaced by "
                              f"the next readable image" + "".join(f"\n  {p}: {why}" for p, why in new.items()))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._collect("train", data_batch)
        epoch_length = len(runner.train_dataloader)
        if (runner.iter + 1) % epoch_length == 0 or runner.iter + 1 == runner.max_iters:
            self._report(runner, "train", f"training epoch {runner.iter // epoch_length + 1}")

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._collect("val", data_batch)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._report(runner, "val", "validation")


@HOOKS.register_module()
class PhiSStatsHook(Hook):
    """Before training: stream the backbone's last-layer maps of ``num_batches`` training
    batches at the student resolution into every module of ``model.calibration_targets()``
    (the upsampler and the objective, those with statistics still to fit, e.g. PHI-S), then
    ``finish_calibration()`` on each (statistics summed over ranks there). Skipped when nothing
    needs it, e.g. when the checkpoint being resumed already holds fitted statistics."""

    priority = "HIGH"

    def __init__(self, num_batches: int = 50):
        self.num_batches = int(num_batches)

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        targets = model.calibration_targets()
        if not targets:
            return

        dev = next(model.upsampler.parameters(), torch.zeros(0)).device
        sampler = runner.train_dataloader.sampler
        sampler.set_epoch(10 ** 6)  # a pass of its own: the training epochs' order is untouched
        count = 0
        with torch.no_grad():
            for k, batch in enumerate(runner.train_dataloader):
                if k >= self.num_batches:
                    break
                feats = model.last_layer_map(resize(normalise(batch["image"].to(dev)), model.student_size))
                count += feats.shape[0] * feats.shape[-2] * feats.shape[-1]
                for t in targets:
                    t.calibrate(feats)
        for t in targets:
            t.finish_calibration()
        names = ", ".join(type(t).__name__ for t in targets)
        print_log(f"calibrated {names} on {count} feature vectors (this rank)", logger="current",
                  level=logging.INFO)
