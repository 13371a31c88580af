"""mmengine pieces for exact distillation: the runner and the loop (checkpoint safety, trusted
loading, non-finite checks, the DDP wrapper and the trainable-only optimizer come from
:mod:`brixel_plugins.engine`).

Exact resume: the data a step sees is a pure function of (seed, epoch, index) (see data.py),
the loop fast-forwards the sampler without decoding skipped images, and the global torch RNG is
re-seeded from (seed, iteration, rank) before every step, so dropout / drop-path / jitters at
step k do not depend on what ran before (validation, dataloader iterators, a restart).
Model, optimizer, scheduler and BN statistics come from mmengine's own checkpoint.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.runner.base_loop import BaseLoop

from ..engine import FrozenBackboneDDP, SafeRunner
from .registry import LOOPS, MODEL_WRAPPERS, RUNNERS


@RUNNERS.register_module()
class DistillRunner(SafeRunner):
    """The engine's SafeRunner (trusted checkpoint loading, resume that falls back to the newest
    loadable checkpoint) in this package's scope."""


# -- the training loop ----------------------------------------------------------------------------
def step_seed(seed: int, iteration: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(iteration) * 7_919 + int(rank) * 104_729) % (2 ** 62)


@LOOPS.register_module()
class DistillLoop(BaseLoop):
    """Iteration-based loop with epochs of data (``max_epochs`` or ``max_iters``), validation every
    ``val_interval`` iterations and at the end, and exact resume (see the module docstring)."""

    def __init__(self, runner, dataloader, max_iters: Optional[int] = None, max_epochs: Optional[float] = None,
                 val_interval: int = 1000, val_begin: int = 1):
        super().__init__(runner, dataloader)
        self.epoch_length = len(self.dataloader)
        if self.epoch_length == 0:
            raise ValueError("the training dataloader is empty (fewer images than the batch size with "
                             "drop_last?)")
        if (max_iters is None) == (max_epochs is None):
            raise ValueError("give exactly one of max_iters and max_epochs")
        self._max_iters = int(max_iters) if max_iters is not None else int(round(max_epochs * self.epoch_length))
        self._max_epochs = max(1, -(-self._max_iters // self.epoch_length))
        self.val_interval, self.val_begin = int(val_interval), int(val_begin)
        self._iter = 0
        self.stop_training = False

    @property
    def max_iters(self) -> int:
        return self._max_iters

    @property
    def max_epochs(self) -> int:
        return self._max_epochs

    @property
    def iter(self) -> int:
        return self._iter

    @property
    def epoch(self) -> int:
        return self._iter // self.epoch_length

    def _batches(self) -> Iterator:
        """Batches from iteration ``self._iter`` on, forever, epoch after epoch."""
        sampler = self.dataloader.sampler
        epoch, within = divmod(self._iter, self.epoch_length)
        if not hasattr(sampler, "skip"):
            raise TypeError("DistillLoop needs a sampler with skip() (ResumableSampler)")
        while True:
            sampler.set_epoch(epoch)
            sampler.skip(within * self.dataloader.batch_size)
            for k, batch in enumerate(self.dataloader):
                if within + k >= self.epoch_length:
                    break
                yield batch
            epoch, within = epoch + 1, 0

    def run(self):
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            print_log(f"resuming at iteration {self._iter} (epoch {self.epoch}, batch "
                      f"{self._iter % self.epoch_length} of {self.epoch_length})", logger="current")
        # as mmengine's own loops do: the wrapper's step count (gradient accumulation, warm-up
        # clipping) continues from the resumed iteration instead of restarting at 0
        self.runner.optim_wrapper.initialize_count_status(self.runner.model, self._iter, self._max_iters)
        batches = self._batches()
        rank = get_rank()
        seed = self.runner.seed
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            batch = next(batches)
            torch.manual_seed(step_seed(seed, self._iter, rank))
            self.run_iter(batch)
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model

    def run_iter(self, data_batch) -> None:
        self.runner.call_hook("before_train_iter", batch_idx=self._iter, data_batch=data_batch)
        outputs = self.runner.model.train_step(data_batch, optim_wrapper=self.runner.optim_wrapper)
        self.runner.call_hook("after_train_iter", batch_idx=self._iter, data_batch=data_batch, outputs=outputs)
        self._iter += 1


# configs written before the engine's wrapper served every trainer name it DistillDDP
DistillDDP = MODEL_WRAPPERS.register_module(name="DistillDDP", module=FrozenBackboneDDP)
