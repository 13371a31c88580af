"""``SafeCheckpointHook``: mmengine's CheckpointHook that never leaves a run without a loadable
checkpoint.

mmengine deletes the oldest checkpoint (``max_keep_ckpts``) and the previous best one *before*
writing the new one, and writes ``last_checkpoint`` in place; a kill in between loses everything.
Here the new checkpoint is written first (atomically with ``backend_args=dict(backend='atomic_local')``),
then the pointer (atomically), and only then are old files (outdated periodic ones, the previous
best) deleted. Stale temporary files of killed
writes are removed when training starts, and a model holding NaN/Inf is never saved. Checkpoints hold
tensors and plain data only (any ``weights_only`` loader reads them), and after a resume the best
checkpoints of the abandoned part of the run are deleted (mmengine tracks only its current best).
"""
from __future__ import annotations

import os
import os.path as osp
import re
from contextlib import contextmanager
from typing import Iterator, List

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..common.checks import first_non_finite
from ..common.filesystem import remove_stale_temp_files, write_text_atomic
from .finite import NonFiniteError
from .loading import plain_checkpoint
from .parallel import unwrap_model


class _DeferredRemovals:
    """Stands in for a file backend and records ``remove``/``rmtree`` calls instead of running them."""

    def __init__(self, backend):
        self._backend = backend
        self.paths: List[str] = []

    def remove(self, path) -> None:
        self.paths.append(path)

    def rmtree(self, path) -> None:
        self.paths.append(path)

    def __getattr__(self, name):
        return getattr(self._backend, name)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """Same arguments as mmengine's ``CheckpointHook``; see the module docstring for what differs."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process():
            for folder in dict.fromkeys((self.out_dir, runner.work_dir)):
                for path in remove_stale_temp_files(folder):
                    runner.logger.info(f"removed the temporary file of an interrupted write: {path}")
            if runner.iter > 0 or runner.epoch > 0:  # resumed
                for path in self._untracked_best_checkpoints():
                    runner.logger.info(f"removed {path}: a best checkpoint of the run after the checkpoint "
                                       f"this one resumed from")
                    self._remove(path)

    def _untracked_best_checkpoints(self):
        """``best_<key>_<step file>`` files in ``out_dir`` that are not the best the resumed run
        tracks: written after the checkpoint it resumed from (or not deleted before a kill)."""
        if self.save_best is None or not osp.isdir(self.out_dir):
            return []
        step = re.escape(self.filename_tmpl).replace(r"\{\}", r"\d+")
        keys = "|".join(re.escape(k.replace("/", "_")) for k in self.key_indicators)
        pattern = re.compile(rf"^best_(?:{keys})_{step}$")
        # by name: a work dir moved or copied before the resume keeps its tracked best
        keep = {osp.basename(p) for p in (getattr(self, "best_ckpt_path", None),
                                          *getattr(self, "best_ckpt_path_dict", {}).values()) if p}
        return [osp.join(self.out_dir, n) for n in sorted(os.listdir(self.out_dir))
                if pattern.match(n) and n not in keep]

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # the lowest priority of all hooks: what the others added is converted too
        plain_checkpoint(checkpoint)

    def _check_finite(self, runner) -> None:
        model = unwrap_model(runner.model)
        # what training changes: trainable parameters and buffers (frozen weights cannot diverge)
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        bad = first_non_finite(trained + list(model.named_buffers()))
        if bad:
            raise NonFiniteError(
                f"refusing to save a checkpoint at iteration {runner.iter}: {bad[0]} holds {bad[1]} "
                f"non-finite values of {bad[2]}; the run diverged (the previous checkpoints are kept)")

    def _remove(self, path) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            self.file_backend.rmtree(path)  # deepspeed checkpoints are folders

    @contextmanager
    def _removals_after_saving(self) -> Iterator[None]:
        """Run mmengine's best-checkpoint logic with deletions postponed until it has saved."""
        deferred = _DeferredRemovals(self.file_backend)
        self.file_backend = deferred
        try:
            yield
        finally:
            self.file_backend = deferred._backend
        # only reached when saving succeeded; never delete a file that was just (re)written
        keep = {self.last_ckpt, getattr(self, "best_ckpt_path", None),
                *getattr(self, "best_ckpt_path_dict", {}).values()}
        if is_main_process():
            for path in deferred.paths:
                if path not in keep:
                    self._remove(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """mmengine's order reversed: save, point ``last_checkpoint`` at it, then delete the outdated."""
        self._check_finite(runner)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            # the new checkpoint still lists the outdated ones: if a kill comes before they are
            # deleted, CheckpointHook.before_train deletes them on resume
            runner.message_hub.update_info("keep_ckpt_ids", outdated + list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if self.max_keep_ckpts > 0:
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        if not is_main_process():
            return
        write_text_atomic(osp.join(runner.work_dir, "last_checkpoint"), self.last_ckpt)
        for old in outdated:
            self._remove(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old)))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        self._check_finite(runner)
        with self._removals_after_saving():
            super()._save_best_checkpoint(runner, metrics)
