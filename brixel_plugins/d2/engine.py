"""Train and evaluate a LazyConfig detector with Detectron2's trainer, hooks and evaluators.

Detectron2's ``tools/lazyconfig_train_net.py`` loop, with three changes: the checkpointer is
:class:`~brixel_plugins.d2.checkpoint.FrozenBackboneCheckpointer` (no frozen backbone in the
files, atomic writes, resume from the newest loadable checkpoint); mixed precision is bfloat16
(``train.amp.enabled``, CUDA only; detectron2's ``AMPTrainer`` defaults to float16, which needs
loss scaling and overflows where bfloat16, with float32's range, does not); and the optimizer is
checked to hold no frozen parameter.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from .checkpoint import FrozenBackboneCheckpointer

logger = logging.getLogger("detectron2")


def use_amp(cfg) -> bool:
    """bfloat16 autocast when the config asks for it and the model runs on CUDA."""
    enabled = bool(cfg.train.amp.enabled)
    if enabled and not str(cfg.train.device).startswith("cuda"):
        logger.warning("train.amp.enabled is ignored on %s: bfloat16 autocast is used on CUDA only",
                       cfg.train.device)
    return enabled and str(cfg.train.device).startswith("cuda")


def autocast(cfg):
    return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp(cfg) else contextlib.nullcontext()


def build_model(cfg) -> torch.nn.Module:
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    return model


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer over the model's trainable parameters; refuses one that would
    update a frozen parameter (a custom ``params`` that does not skip ``requires_grad=False``)."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    bad = [n for n, p in model.named_parameters() if not p.requires_grad and id(p) in optimized]
    if bad:
        raise ValueError(f"the optimizer holds {len(bad)} frozen parameters (e.g. {bad[:3]}); "
                         f"build its params with detectron2's get_default_optimizer_params, which skips them")
    return optimizer


def evaluate(cfg, model: torch.nn.Module) -> Dict:
    """Inference on ``cfg.dataloader.test`` scored by ``cfg.dataloader.evaluator`` (e.g. COCOEvaluator)."""
    if "evaluator" not in cfg.dataloader:
        return {}
    with autocast(cfg):
        results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                       instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def build_trainer(cfg, model: torch.nn.Module, loader, optimizer) -> SimpleTrainer:
    if use_amp(cfg):
        # bfloat16 has float32's range: no loss scaling needed
        return AMPTrainer(model, loader, optimizer, precision=torch.bfloat16,
                          grad_scaler=torch.amp.GradScaler("cuda", enabled=False))
    return SimpleTrainer(model, loader, optimizer)


def train(cfg, resume: bool = False) -> Dict:
    """Train ``cfg`` (a LazyConfig with model, dataloader, optimizer, lr_multiplier, train) and
    return the last evaluation's results. Stops with ``FloatingPointError`` on a non-finite
    loss (detectron2's trainer checks every step, before the optimizer steps)."""
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    optimizer = build_optimizer(cfg, model)
    loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = build_trainer(cfg, model, loader, optimizer)
    checkpointer = FrozenBackboneCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results: Dict = {}

    def test_and_keep():
        results.clear()
        results.update(evaluate(cfg, model))
        return results

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results


def evaluate_checkpoint(cfg) -> Dict:
    """``--eval-only``: the model of ``cfg.train.init_checkpoint`` (frozen parts from their files)."""
    model = create_ddp_model(build_model(cfg))
    FrozenBackboneCheckpointer(model).load(cfg.train.init_checkpoint)
    return evaluate(cfg, model)
