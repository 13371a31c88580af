"""What the toy dataset writers share: a dataset folder that is written once, atomically, and
reused only when it was written with the same parameters."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Union


def write_dataset_once(root: Union[str, Path], params: dict, meta_file: str, kind: str,
                       write: Callable[[Path], None]) -> Path:
    """``root`` holding a dataset described by ``params`` (recorded in ``root/meta_file``).

    An existing dataset written with the same parameters is reused; one written with other
    parameters, or a non-empty folder that is no such dataset, is refused (``kind`` names it in
    the message). Otherwise ``write(folder)`` fills a temporary folder beside ``root``, which is
    renamed into place: a crash never leaves half a dataset, and of two processes writing at
    once (two ranks), one result stays.
    """
    root = Path(root)
    meta = root / meta_file
    if not meta.is_file():
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not a {kind} (no {meta_file})")
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write(tmp)
            (tmp / meta_file).write_text(json.dumps(params, indent=1))
            if root.exists():
                root.rmdir()  # empty (checked above)
            try:
                os.replace(tmp, root)
            except OSError:
                if not meta.is_file():  # not another process's finished dataset
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    have = json.loads(meta.read_text())
    if have != params:
        raise ValueError(f"{root} holds a {kind} written with {have}, not {params}; "
                         f"delete it or write to another folder")
    return root
