"""Small shared helpers."""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Union

# atomic_path writes ``.<name>.<8 random characters>.tmp`` beside ``<name>``
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A crash mid-write leaves the previous file intact, never a truncated one. Every atomic write
    of the project (checkpoints of all trainers, pointers, exports, summaries) goes through here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> None:
    """Replace the file at ``path`` by ``data`` in one step (a reader sees the old or the new)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Replace the file at ``path`` by ``text`` in one step (a reader sees the old or the new)."""
    write_bytes_atomic(path, text.encode("utf-8"))


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


def update_json(path: Union[str, Path], key: str, value) -> dict:
    """Set ``key`` in the JSON object stored at ``path`` (created if missing), written atomically.

    Several demos add their own section to one summary file; each rewrites only its key.
    """
    import json

    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str))
    return data


# Notices of the pinned stack a user can do nothing about: mmseg 1.2 calls its own deprecated
# ``build_loss`` and warns about its own defaults, mmengine and mmcv import ``pkg_resources``.
# The demos hide them (before importing those packages) so their tables stay readable; the
# training tools keep every warning.
STACK_NOTICES = (r"pkg_resources is deprecated", r"``build_loss`` would be deprecated",
                 r"Default ``avg_non_ignore`` is False", r"The draw is False")


def hide_stack_notices() -> None:
    import warnings

    for message in STACK_NOTICES:
        warnings.filterwarnings("ignore", message=message)
