"""Where weight files are found, and which bytes they hold: the one lookup rule of the project.

A weight file named in a config or recorded in a checkpoint (DINOv3, an upsampler export) is
looked for, in this order:

1. at its path as given, if that path is absolute;
2. relative to the folder of the config being built (the tools and ``SafeRunner`` tell the lookup
   which config that is, see :func:`config_folder`; for a file of tools/export_model.py, its folder);
3. under ``$BRIXEL_WEIGHTS_DIR`` (one folder or several, separated like ``PATH``);
4. relative to the current working directory.

In the folders of 2-4 the path as written is tried first, then its file name alone, so a checkpoint
recorded on one machine (``/data/me/checkpoints/x.pth``) finds ``x.pth`` on another. When an
expected sha256 is known, a candidate whose bytes differ is passed over; when nothing fits, the
error names the file, the config key that sets it, every place looked and the hash expected.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from ..backbones.weights import WeightFileError, file_sha256

PathLike = Union[str, Path]
WEIGHTS_DIR_ENV = "BRIXEL_WEIGHTS_DIR"

_config_dir: ContextVar[Optional[str]] = ContextVar("brixel_config_dir", default=None)


@contextmanager
def config_folder(config_file: Optional[PathLike]) -> Iterator[None]:
    """While models are built from ``config_file``, relative weight paths may be relative to its folder."""
    token = _config_dir.set(str(Path(config_file).resolve().parent) if config_file else None)
    try:
        yield
    finally:
        _config_dir.reset(token)


def search_folders(config_dir: Optional[PathLike] = None) -> List[Tuple[str, Path]]:
    """``(what, folder)`` in lookup order: the config's folder, ``$BRIXEL_WEIGHTS_DIR``, the cwd."""
    config_dir = config_dir if config_dir is not None else _config_dir.get()
    out = [("the config's folder", Path(config_dir))] if config_dir else []
    out += [(f"${WEIGHTS_DIR_ENV}", Path(d)) for d in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if d]
    out.append(("the working directory", Path.cwd()))
    return out


def candidates(path: PathLike, config_dir: Optional[PathLike] = None) -> List[Path]:
    """Every place :func:`find_weight_file` looks for ``path``, in order, without duplicates."""
    path = Path(path).expanduser()
    out = [path] if path.is_absolute() else []
    for _, folder in search_folders(config_dir):
        if not path.is_absolute():
            out.append(folder / path)
        out.append(folder / path.name)
    seen, unique = set(), []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _matches(expected: str, got: str) -> bool:
    # a full hash, or the prefix torch.hub puts in file names
    return got.startswith(expected.lower())


def find_weight_file(path: PathLike, key: str, sha256: Optional[str] = None,
                     config_dir: Optional[PathLike] = None) -> str:
    """The file ``path`` (set by the config key ``key``) by the lookup rule of this module.

    ``sha256``: the hash (or a prefix of it) the file must have; a candidate with other bytes is
    passed over. Raises :class:`WeightFileError` naming the file, ``key``, the places looked and
    the hash expected when no candidate fits."""
    tried = candidates(path, config_dir)
    wrong = []
    for c in tried:
        if c.is_file():
            if sha256 is None:
                return str(c)
            got = file_sha256(c)
            if _matches(sha256, got):
                return str(c)
            wrong.append(f"{c} (sha256 {got[:16]}...)")
    expected = f"; expected sha256 {sha256}" if sha256 else ""
    if wrong:
        raise WeightFileError(
            f"weight file {path} (set by {key}) was found, but with other bytes than recorded: "
            + ", ".join(wrong) + f"{expected}. Put the file the checkpoint was trained with in one of "
            f"these places, or point {key} at it.")
    where = "; ".join(str(c) for c in tried)
    raise WeightFileError(
        f"weight file not found: {path} (set by {key}){expected}. Looked in: {where}. Put it at one of "
        f"these paths, set {WEIGHTS_DIR_ENV} to the folder that holds it, or change {key}.")

