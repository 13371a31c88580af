"""Checkpoint files that are never half-written: an atomic mmengine file backend (the writes
themselves are :mod:`brixel_plugins.utils`'s, shared by every trainer)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend

from ..utils import write_bytes_atomic


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend, but every file is written to a temporary name, fsynced and renamed:
    a kill mid-write leaves the previous file intact, never a truncated one.
    Configs select it with ``backend_args=dict(backend='atomic_local')``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        write_bytes_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)


register_backend("atomic_local", AtomicLocalBackend, force=True)
