"""Checkpoint files that are never half-written: an atomic mmengine file backend, and the clean-up
of temporary files a killed write leaves behind."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

from ..utils import atomic_path

# utils.atomic_path writes ``.<name>.<8 random characters>.tmp`` beside ``<name>``
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend, but every file is written to a temporary name, fsynced and renamed:
    a kill mid-write leaves the previous file intact, never a truncated one.
    Configs select it with ``backend_args=dict(backend='atomic_local')``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        with atomic_path(filepath) as tmp:
            with open(tmp, "wb") as f:
                f.write(obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)


register_backend("atomic_local", AtomicLocalBackend, force=True)


def remove_stale_temp_files(folder: Union[str, Path]) -> List[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (not recursive).

    Call it only when nothing is writing there (at the start of a run). Returns what it removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if TEMP_NAME.match(path.name) and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Replace the file at ``path`` by ``text`` in one step (a reader sees the old or the new)."""
    with atomic_path(path) as tmp:  # fsynced before the rename
        tmp.write_text(text)
