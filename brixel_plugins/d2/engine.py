"""Train and evaluate a LazyConfig detector with Detectron2's trainer, hooks and evaluators.

Detectron2's ``tools/lazyconfig_train_net.py`` loop, with four changes: the checkpointer is
:class:`~brixel_plugins.d2.checkpoint.FrozenBackboneCheckpointer` (no frozen backbone in the
files, atomic writes, resume from the newest loadable checkpoint); mixed precision is bfloat16
(``train.amp.enabled``, CUDA only; detectron2's ``AMPTrainer`` defaults to float16, which needs
loss scaling and overflows where bfloat16, with float32's range, does not); the optimizer is
checked to hold no frozen parameter; and DDP is the engine's
:class:`~brixel_plugins.engine.FrozenBackboneDDP` (device ids from the model's device, so N CPU
processes run on gloo as N GPUs run on NCCL), started by detectron2's ``launch`` (``--num-gpus``)
or by torchrun (:func:`init_torchrun_process_group`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Union

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..engine import FrozenBackboneDDP, check_trainable_only
from .checkpoint import FrozenBackboneCheckpointer, PeriodicCheckpointer

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
    check_trainable_only(optimizer, model)  # detectron2's get_default_optimizer_params skips them
    return optimizer


def wrap_ddp(model: torch.nn.Module, fp16_compression: bool = False, **kwargs) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` (``cfg.train.ddp``'s arguments) with the engine's wrapper:
    the model itself in a single process, else :class:`FrozenBackboneDDP` (device ids from the
    model's device: CPU processes need none, detectron2 always passed the local rank)."""
    if comm.get_world_size() == 1:
        return model
    ddp = FrozenBackboneDDP(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def init_torchrun_process_group() -> None:
    """Start the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, the rendezvous), as detectron2's ``launch`` does for the
    processes it spawns itself: NCCL on the local GPU, gloo without CUDA, and the per-machine group
    detectron2's ``comm.get_local_rank`` relies on."""
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    comm.create_local_process_group(local_size)
    comm.synchronize()


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


def train(cfg, resume: Union[bool, str, None] = False, extra_hooks=()) -> Dict:
    """Train ``cfg`` (a LazyConfig with model, dataloader, optimizer, lr_multiplier, train) and
    return the last evaluation's results. ``resume``: True or ``'auto'`` continues from the newest
    loadable checkpoint of ``train.output_dir`` (else starts from ``train.init_checkpoint``), a
    path continues from that checkpoint. ``extra_hooks``: detectron2 hooks run after ours. Stops
    with ``FloatingPointError`` on a non-finite loss (detectron2's trainer checks every step,
    before the optimizer steps)."""
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    optimizer = build_optimizer(cfg, model)
    loader = instantiate(cfg.dataloader.train)
    model = wrap_ddp(model, **cfg.train.ddp)
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
        PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
        *extra_hooks,
    ])
    if isinstance(resume, str) and resume != "auto":
        checkpointer.load(resume)  # model, optimizer, scheduler and iteration of that checkpoint
        start_iter = trainer.iter + 1
    else:
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=bool(resume))
        start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results


def evaluate_checkpoint(cfg) -> Dict:
    """``--eval-only``: the model of ``cfg.train.init_checkpoint`` (frozen parts from their files).
    No DDP: nothing trains; with several processes each infers its share of the test set
    (detectron2's inference sampler) and the evaluator gathers them."""
    model = build_model(cfg)
    FrozenBackboneCheckpointer(model).load(cfg.train.init_checkpoint)
    return evaluate(cfg, model)
