"""mmengine checkpoints that any ``weights_only`` loader reads, loaded with their training record
checked, and ``resume`` that falls back to the newest loadable checkpoint.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls ``torch.load``
without the argument: stock mmengine checkpoints (message-hub ``HistoryBuffer`` objects, numpy
arrays) are then refused by mmseg's ``init_model``, ``MMSegInferencer`` and stock ``tools/test.py``.
Rather than allow-listing those classes process-wide (``HistoryBuffer.__setstate__`` installs
whatever the file names as class-level statistics methods), :class:`SafeRunner` writes checkpoints
whose message hub is plain data (:func:`plain_checkpoint`) and turns it back into
``HistoryBuffer`` objects when it resumes (:func:`restore_checkpoint`). Checkpoints written by
stock mmengine still load through :class:`SafeRunner`, with exactly their classes allowed for that
one load.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from ..files.checkpoints import (  # noqa: F401
    CheckpointError,
    CheckpointMismatchError,
    check_records,
    checkpoint_globals,
    is_zip_checkpoint,
    load_checkpoint_file,
    refuse_or_warn,
    resume_newest,
    state_dict_problems,
    trusted_checkpoint_globals,
    unloadable_reason,
)
from ..files.checkpoints import resume_candidates as _candidates
from ..files.lookup import config_folder
from .parallel import unwrap_model

# the periodic checkpoints of mmengine's CheckpointHook (default filename_tmpl); best_* files
# hold no optimizer state, so resuming from them would not continue the run
PERIODIC_CHECKPOINT = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")
_HISTORY_BUFFER = "__mmengine_history_buffer__"


def read_pointer(work_dir: str):
    """The checkpoint path mmengine's ``last_checkpoint`` file names, or None (missing / empty)."""
    pointer = os.path.join(work_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        return f.read().strip() or None


def resume_candidates(work_dir: str):
    """Checkpoints to resume from, best first: the one ``last_checkpoint`` names, then the periodic
    ``iter_N.pth`` / ``epoch_N.pth`` beside it and in ``work_dir``, newest (largest N) first."""
    named = read_pointer(work_dir)
    extra = [os.path.dirname(named)] if named and os.path.dirname(named) else []
    return _candidates(work_dir, named, PERIODIC_CHECKPOINT, extra)


# -- checkpoints of plain data -------------------------------------------------------------------
def _to_plain(obj: Any) -> Any:
    if isinstance(obj, HistoryBuffer):
        return {_HISTORY_BUFFER: {"log_history": obj._log_history.tolist(),
                                  "count_history": obj._count_history.tolist(), "max_length": obj.max_length}}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def _from_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_HISTORY_BUFFER}:
            return HistoryBuffer(**obj[_HISTORY_BUFFER])
        return {k: _from_plain(v) for k, v in obj.items()}
    return obj


def plain_checkpoint(checkpoint: Dict[str, Any]) -> None:
    """Make a checkpoint mmengine is about to save plain data (in place): message-hub
    ``HistoryBuffer`` objects become marked dicts, numpy arrays tensors, numpy scalars Python numbers.
    Any ``weights_only`` loader then reads it (mmseg's init_model, stock tools/test.py, torch.load)."""
    for key in ("message_hub", "meta"):
        if key in checkpoint:
            checkpoint[key] = _to_plain(checkpoint[key])


def restore_checkpoint(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Undo :func:`plain_checkpoint` for mmengine's ``resume`` (HistoryBuffers back in the message hub)."""
    hub = checkpoint.get("message_hub")
    if isinstance(hub, dict) and isinstance(hub.get("log_scalars"), dict):
        hub["log_scalars"] = {k: _from_plain(v) for k, v in hub["log_scalars"].items()}
    return checkpoint


@RUNNERS.register_module()
class SafeRunner(Runner):
    """mmengine's Runner whose checkpoints hold only tensors and plain data, loaded with torch's safe
    unpickler, checked against the model (training record, tensor shapes, keys: a checkpoint of
    another model is an error unless ``BRIXEL_PARTIAL_LOAD=1``), and auto-resume (``resume=True``,
    no ``load_from``) that takes the newest loadable checkpoint, logging each one it skipped and
    why. Weight files of the config are also looked for relative to the config's folder. Configs of
    any scope select it with ``runner_type='SafeRunner'`` (mmseg's stock tools/train.py honours it);
    trainers may subclass it."""

    def __init__(self, *args, **kwargs):
        cfg = kwargs.get("cfg")
        with config_folder(getattr(cfg, "filename", None)):
            super().__init__(*args, **kwargs)

    def load_checkpoint(self, filename: str, map_location="cpu", strict: bool = False,
                        revise_keys: list = [(r"^module.", "")]):  # noqa: B006  mmengine's signature
        if os.path.exists(filename) or not re.match(r"^[a-z0-9+.-]+://", filename):
            checkpoint = load_checkpoint_file(filename, map_location)
        else:  # URLs, open-mmlab://: mmengine's loaders with torch's defaults
            from mmengine.runner.checkpoint import _load_checkpoint

            checkpoint = _load_checkpoint(filename, map_location=map_location)
        restore_checkpoint(checkpoint)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = unwrap_model(self.model)
        state = checkpoint.get("state_dict", checkpoint)
        revised = dict(state)
        for pattern, replacement in revise_keys:
            revised = {re.sub(pattern, replacement, k): v for k, v in revised.items()}
        check_records(model, revised)
        refuse_or_warn(state_dict_problems(model.state_dict(), revised), f"checkpoint {filename} does not fit "
                       f"this model")
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint

    def load_or_resume(self) -> None:
        if self._has_loaded or not self._resume or self._load_from is not None:
            return super().load_or_resume()
        path, _ = resume_newest(resume_candidates(self.work_dir), self.resume, self.logger, self.work_dir)
        if path is None:
            self.logger.info(f"resume: no checkpoint in {self.work_dir} yet; starting from the beginning")
        self._has_loaded = True
