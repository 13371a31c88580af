"""mmengine pieces for exact, crash-safe distillation: the loop, atomic checkpoint files, a
checkpoint loader that works under torch's ``weights_only`` default, and CPU-capable DDP.

Exact resume: the data a step sees is a pure function of (seed, epoch, index) (see data.py),
the loop fast-forwards the sampler without decoding skipped images, and the global torch RNG is
re-seeded from (seed, iteration, rank) before every step, so dropout / drop-path / jitters at
step k do not depend on what ran before (validation, dataloader iterators, a restart).
Model, optimizer, scheduler and BN statistics come from mmengine's own checkpoint.
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from typing import Iterator, List, Optional, Union

import torch
from mmengine.dist import get_rank
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.runner import Runner
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.runner.base_loop import BaseLoop

from ..utils import atomic_path
from .registry import LOOPS, MODEL_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS, RUNNERS


# -- atomic checkpoint writes ---------------------------------------------------------------------
class AtomicLocalBackend(LocalBackend):
    """Local files written to a temporary name, fsynced and renamed: a kill mid-write leaves the
    previous checkpoint (and ``last_checkpoint`` pointer) intact."""

    def put(self, obj: bytes, filepath) -> None:
        with atomic_path(filepath) as tmp:
            with open(tmp, "wb") as f:
                f.write(obj)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)


register_backend("atomic_local", AtomicLocalBackend, force=True)


# -- loading mmengine checkpoints under torch.load(weights_only=True) -----------------------------
# mmengine 0.10.7 calls torch.load without weights_only; torch >= 2.6 then refuses its own
# checkpoints (message-hub HistoryBuffers, numpy arrays/scalars/dtypes). Rather than turning the
# safe unpickler off, we allow exactly these globals, and refuse a file naming anything else.
_TRUSTED_PREFIXES = ("numpy.dtypes.",)
_TRUSTED = (
    "mmengine.logging.history_buffer.HistoryBuffer",
    "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    # HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, 'min'); torch's
    # unpickler still refuses to *call* anything that is not allow-listed, so getattr can only
    # fetch attributes of the objects above.
    "builtins.getattr",
)


def _resolve(name: str):
    mod, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def checkpoint_globals(path: str) -> List[str]:
    """Names of the non-tensor globals a torch checkpoint file would unpickle."""
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


@contextmanager
def trusted_checkpoint_globals(path: Optional[str]) -> Iterator[None]:
    """Allow the globals mmengine's checkpoints need while ``path`` is loaded, or refuse it."""
    names = checkpoint_globals(path) if path and os.path.isfile(path) else []
    bad = [n for n in names if n not in _TRUSTED and not n.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise RuntimeError(
            f"{path} would unpickle objects outside what mmengine checkpoints hold: {bad}. "
            f"Refusing to load it with weights_only=False; if you trust the file, load it yourself.")
    allowed = [_resolve(n) for n in names]
    if "numpy.dtype" in names:
        # numpy.dtype('f8') rebuilds as an instance of numpy.dtypes.Float64DType, which the
        # unpickler checks too although the file never names it: allow numpy's dtype classes
        import numpy.dtypes

        allowed += [v for v in vars(numpy.dtypes).values() if isinstance(v, type) and issubclass(v, numpy.dtype)]
    with torch.serialization.safe_globals(allowed):
        yield


@RUNNERS.register_module()
class DistillRunner(Runner):
    """mmengine's Runner, with checkpoint loading that keeps torch's safe unpickler."""

    def load_checkpoint(self, filename: str, map_location: Union[str, torch.device] = "cpu", *args, **kwargs):
        with trusted_checkpoint_globals(filename):
            return super().load_checkpoint(filename, map_location, *args, **kwargs)


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


# -- DDP that also runs on CPU (gloo) -------------------------------------------------------------
@MODEL_WRAPPERS.register_module()
class DistillDDP(MMDistributedDataParallel):
    """mmengine's DDP wrapper; drops ``device_ids`` for CPU modules (the Runner always passes
    ``LOCAL_RANK``, which DDP rejects for a module on the CPU)."""

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = next(module.parameters()).device.type == "cpu"
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


# -- the optimizer sees trainable modules only ----------------------------------------------------
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DistillOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Like mmengine's default, but the optimizer gets only parameters that train (upsampler and
    training-only modules such as the attention downsampler), never the frozen backbone's
    (mmengine's default hands every parameter to the optimizer, frozen or not)."""

    def __call__(self, model):
        if self.paramwise_cfg:
            raise ValueError("DistillOptimWrapperConstructor does not support paramwise_cfg")
        inner = model.module if hasattr(model, "module") else model
        params = [p for n, p in inner.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        if not params:
            raise ValueError("nothing to train: the upsampler has no trainable parameters")
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=params))
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
