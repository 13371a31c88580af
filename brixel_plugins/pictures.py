"""The pictures a user hands to the inference tools (tools/infer.py, tools/d2_infer.py): files,
folders and glob patterns, each with the name its outputs get."""
from __future__ import annotations

import glob
import os.path as osp
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def picture_paths(inputs: Sequence[str], skip: Optional[str] = None) -> List[Tuple[str, str]]:
    """``(path, output stem)`` for every picture named by ``inputs``: an image file, a folder (its
    images, recursively; the stem keeps the sub-folders) or a glob pattern. Sorted within each
    input; refuses an input that names no image and two pictures that would write the same outputs.
    ``skip``: a folder never searched (a tool's output folder inside an input folder)."""
    skip_dir = Path(osp.abspath(skip)) if skip else None

    def skipped(p: Path) -> bool:
        return skip_dir is not None and skip_dir in Path(osp.abspath(p)).parents

    found: List[Tuple[str, str]] = []
    for item in inputs:
        if osp.isdir(item):
            root = Path(item)
            files = [p for p in sorted(root.rglob("*"))
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not skipped(p)]
            found += [(str(p), str(p.relative_to(root).with_suffix(""))) for p in files]
        elif osp.isfile(item):
            files = [Path(item)]
            found.append((item, Path(item).stem))
        else:
            files = [Path(p) for p in sorted(glob.glob(item, recursive=True))
                     if osp.isfile(p) and Path(p).suffix.lower() in IMAGE_EXTS and not skipped(Path(p))]
            found += [(str(p), p.stem) for p in files]
        if not files:
            raise FileNotFoundError(f"{item}: no such image file, and no image ({'/'.join(IMAGE_EXTS)}) in it "
                                    f"as a folder or glob pattern")
    owners: Dict[str, str] = {}
    for path, stem in found:
        if stem in owners and osp.abspath(owners[stem]) != osp.abspath(path):
            raise ValueError(f"{owners[stem]} and {path} would write the same outputs ({stem}.*); "
                             f"pass their folders, or rename one")
        owners[stem] = path
    return list({stem: (path, stem) for path, stem in found}.values())
