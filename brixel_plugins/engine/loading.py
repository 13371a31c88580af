"""Loading mmengine checkpoints safely: torch's ``weights_only`` unpickler with exactly the globals
mmengine's own checkpoints need, clear errors for unreadable files, and ``resume`` that falls back
to the newest loadable checkpoint (saying which it skipped and why).

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses its own
checkpoints (message-hub HistoryBuffers, numpy arrays/scalars/dtypes). Rather than turning the safe
unpickler off, we allow exactly these globals and refuse a file naming anything else.
"""
from __future__ import annotations

import importlib
import os
import re
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

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

# the periodic checkpoints of mmengine's CheckpointHook (default filename_tmpl); best_* files
# hold no optimizer state, so resuming from them would not continue the run
PERIODIC_CHECKPOINT = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded (missing, empty, truncated, or holding untrusted objects)."""


def _resolve(name: str):
    mod, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def checkpoint_globals(path: str) -> List[str]:
    """Names of the non-tensor globals a torch checkpoint file would unpickle (reads no tensors)."""
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def is_zip_checkpoint(path: str) -> bool:
    """torch.save's format since 1.6 (a zip archive); older files are one pickle stream, which
    torch.load still reads but which cannot be inspected without loading."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _untrusted(names: List[str]) -> List[str]:
    return [n for n in names if n not in _TRUSTED and not n.startswith(_TRUSTED_PREFIXES)]


def unloadable_reason(path: str) -> Optional[str]:
    """Why the local file ``path`` cannot be loaded as a checkpoint, or None if it can be tried.

    Cheap: reads the zip directory and the pickle, not the tensors (a truncated file has lost its
    zip directory, which sits at the end)."""
    if not os.path.isfile(path):
        return "file not found"
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    if not is_zip_checkpoint(path):
        return None  # the legacy format: torch.load (weights_only) is the check
    try:
        names = checkpoint_globals(path)
    except Exception as e:  # torch raises several types for bad bytes
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        return f"not a readable torch checkpoint ({size} bytes, truncated or corrupt): {type(e).__name__}: {msg}"
    bad = _untrusted(names)
    if bad:
        return (f"would unpickle objects outside what mmengine checkpoints hold: {bad} (if you trust the "
                f"file, load it yourself with torch.load(weights_only=False))")
    return None


@contextmanager
def trusted_checkpoint_globals(path: Optional[str]) -> Iterator[None]:
    """Allow the globals mmengine's checkpoints need while ``path`` is loaded, or refuse it.
    Paths that are not local files (URLs, ``open-mmlab://``) load with torch's defaults."""
    names = checkpoint_globals(path) if path and os.path.isfile(path) and is_zip_checkpoint(path) else []
    bad = _untrusted(names)
    if bad:
        raise CheckpointError(
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


def read_pointer(work_dir: str) -> Optional[str]:
    """The checkpoint path mmengine's ``last_checkpoint`` file names, or None (missing / empty)."""
    pointer = os.path.join(work_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        return f.read().strip() or None


def resume_candidates(work_dir: str) -> List[str]:
    """Checkpoints to resume from, best first: the one ``last_checkpoint`` names, then the periodic
    ``iter_N.pth`` / ``epoch_N.pth`` beside it and in ``work_dir``, newest (largest N) first."""
    named = read_pointer(work_dir)
    folders = [work_dir] + ([os.path.dirname(named)] if named and os.path.dirname(named) else [])
    found: List[Tuple[int, str]] = []
    for folder in dict.fromkeys(os.path.abspath(f) for f in folders):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                m = PERIODIC_CHECKPOINT.match(name)
                if m:
                    found.append((int(m.group(1)), os.path.join(folder, name)))
    ordered = ([named] if named else []) + [p for _, p in sorted(found, reverse=True)]
    out, seen = [], set()
    for p in ordered:
        if os.path.abspath(p) not in seen:
            seen.add(os.path.abspath(p))
            out.append(p)
    return out


@RUNNERS.register_module()
class SafeRunner(Runner):
    """mmengine's Runner with checkpoint loading that keeps torch's safe unpickler, clear errors for
    unreadable checkpoints, and auto-resume (``resume=True``, no ``load_from``) that takes the newest
    loadable checkpoint, logging each one it skipped and why. Configs of any scope select it with
    ``runner_type='SafeRunner'``; trainers may subclass it."""

    def load_checkpoint(self, filename: str, map_location="cpu", *args, **kwargs):
        if os.path.exists(filename) or not re.match(r"^[a-z0-9+.-]+://", filename):
            reason = unloadable_reason(filename)
            if reason:
                raise CheckpointError(f"cannot load checkpoint {filename}: {reason}")
        with trusted_checkpoint_globals(filename):
            return super().load_checkpoint(filename, map_location, *args, **kwargs)

    def load_or_resume(self) -> None:
        if self._has_loaded or not self._resume or self._load_from is not None:
            return super().load_or_resume()
        skipped = []
        for path in resume_candidates(self.work_dir):
            reason = unloadable_reason(path)
            if reason is None:
                for bad, why in skipped:
                    self.logger.warning(f"resume: skipped checkpoint {bad}: {why}")
                self.logger.info(f"resuming from {path}"
                                 + (f" (the newest loadable of {len(skipped) + 1})" if skipped else ""))
                self.resume(path)
                self._has_loaded = True
                return
            skipped.append((path, reason))
        if skipped:
            raise CheckpointError(f"resume: no loadable checkpoint in {self.work_dir}: "
                                  + "; ".join(f"{p}: {why}" for p, why in skipped))
        self.logger.info(f"resume: no checkpoint in {self.work_dir} yet; starting from the beginning")
