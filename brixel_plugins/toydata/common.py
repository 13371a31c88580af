"""What the toy dataset writers share: a dataset folder that is written once, atomically, and
reused only when it was written with the same parameters."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Union

from ..common.filesystem import file_lock


def write_dataset_once(root: Union[str, Path], params: dict, meta_file: str, kind: str,
                       write: Callable[[Path], None]) -> Path:
    """``root`` holding a dataset described by ``params`` (recorded in ``root/meta_file``).

    An existing dataset written with the same parameters is reused; one written with other
    parameters, or a non-empty folder that is no such dataset, is refused (``kind`` names it in
    the message). Otherwise ``write(folder)`` fills a temporary folder beside ``root``, which is
    renamed into place: a crash never leaves half a dataset. Of several processes asking at once
    (the ranks of one run), one writes while the others wait on a lock file beside ``root``, then
    read (and check) its dataset.
    """
    root = Path(root)
    meta = root / meta_file
    if not meta.is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        # several processes (the ranks of one run, runs side by side) may ask at once: one writes,
        # the others wait and then read its dataset
        with file_lock(root.parent / f".{root.name}.lock"):
            if not meta.is_file():
                _write_folder(root, params, meta, kind, write)
    have = json.loads(meta.read_text())
    if have != params:
        raise ValueError(f"{root} holds a {kind} written with {have}, not {params}; "
                         f"delete it or write to another folder")
    return root


def _write_folder(root: Path, params: dict, meta: Path, kind: str, write: Callable[[Path], None]) -> None:
    """``write`` into a temporary folder beside ``root``, then rename it into place."""
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a {kind} (no {meta.name})")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        (tmp / meta.name).write_text(json.dumps(params, indent=1))
        try:
            if root.exists():
                root.rmdir()  # empty (checked above)
            os.replace(tmp, root)
        except OSError:
            if not meta.is_file():  # else: another process's dataset (a file system whose locks do not hold)
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
