"""The pictures a user hands to the inference tools (tools/infer.py, tools/d2_infer.py): files,
folders and glob patterns, each with the name its outputs get."""
from __future__ import annotations

import glob
import os.path as osp
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def picture_paths(inputs: Sequence[str], exclude: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """``(path, output stem)`` for every picture named by ``inputs``: an image file, a folder (its
    images, recursively; the stem keeps the sub-folders) or a glob pattern. Sorted within each
    input; refuses an input that names no image and two pictures that would write the same outputs.

    Pictures that a folder or a glob pattern finds inside a folder of ``exclude`` (the tool's output
    folders) are skipped, so a run whose outputs lie inside its input folder never reads them back
    on the next run; a file named itself is always taken."""
    skip = [Path(f).resolve() for f in exclude]
    found: List[Tuple[str, str]] = []
    for item in inputs:
        if osp.isdir(item):
            root = Path(item)
            files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                     and not _inside(p.resolve(), skip)]
            found += [(str(p), str(p.relative_to(root).with_suffix(""))) for p in files]
        elif osp.isfile(item):  # named by the user: taken even from an excluded folder
            files = [Path(item)]
            found.append((item, Path(item).stem))
        else:
            files = [Path(p) for p in sorted(glob.glob(item, recursive=True))
                     if osp.isfile(p) and Path(p).suffix.lower() in IMAGE_EXTS and not _inside(Path(p).resolve(), skip)]
            found += [(str(p), p.stem) for p in files]
        if not files:
            outside = f" outside the output folders {', '.join(map(str, exclude))}" if exclude else ""
            raise FileNotFoundError(f"{item}: no such image file, and no image ({'/'.join(IMAGE_EXTS)}){outside} "
                                    f"in it as a folder or glob pattern")
    owners: Dict[str, str] = {}
    for path, stem in found:
        if stem in owners and osp.abspath(owners[stem]) != osp.abspath(path):
            raise ValueError(f"{owners[stem]} and {path} would write the same outputs ({stem}.*); "
                             f"pass their folders, or rename one")
        owners[stem] = path
    return list({stem: (path, stem) for path, stem in found}.values())


class PicturesFailedError(RuntimeError):
    """Some pictures could not be read or predicted; every other one was done and written (the
    message lists the failures): the tool exits 1 after finishing the rest."""
