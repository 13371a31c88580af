"""Images for distillation: any folder (recursive), an optional list file, a held-out split.

Every crop and flip is a pure function of (seed, epoch, index): the sampler hands the dataset
``(epoch, index)`` pairs, so a resumed run sees exactly the pixels an uninterrupted one would,
with any number of workers and no random state to save.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from torch.utils.data import Dataset, Sampler

from ..images import load_rgb, skimage_photo_files
from . import transforms  # noqa: F401  (registers the releases' crop policies)
from .registry import DATA_SAMPLERS, DATASETS, TRANSFORMS

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")

def list_images(root: Union[str, Path], list_file: Optional[Union[str, Path]] = None) -> List[str]:
    """Sorted image paths under ``root`` (recursive), or the ones named in ``list_file``
    (one path per line, relative to ``root`` or absolute; blank lines and # comments ignored)."""
    root = Path(root)
    if list_file is not None:
        out = []
        for line in Path(list_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                out.append(str(p if p.is_absolute() else root / p))
        return out
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = [str(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    if not files:
        raise FileNotFoundError(f"no images ({'/'.join(IMAGE_EXTS)}) under {root}")
    return files


def image_header_error(path: str) -> Optional[str]:
    """Why ``path`` is not an image file Pillow can open (its header only: cheap), or None."""
    from PIL import Image

    try:
        with Image.open(path):  # parses the header; the pixels are not decoded
            pass
    except Exception as e:  # Pillow raises many types for bad files
        return f"{type(e).__name__}: {e}"
    return None


def readable_images(files: Sequence[str], threads: int = 8) -> Tuple[List[str], Dict[str, str]]:
    """``files`` split into those whose header opens and ``{path: reason}`` for the others.
    Files that open but fail to decode are found while reading (see ImageFolderDataset)."""
    if not files:
        return [], {}
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        errors = list(pool.map(image_header_error, files))
    return ([f for f, e in zip(files, errors) if e is None],
            {f: e for f, e in zip(files, errors) if e is not None})


def split_files(files: Sequence[str], num_val: Union[int, float], seed: int = 0) -> Tuple[List[str], List[str]]:
    """Deterministic held-out split: ``num_val`` images (or that fraction when < 1) for validation."""
    files = sorted(files)
    # a fraction holds out at least one image: 1% of 10 photos is still a held-out photo
    n_val = max(1, int(round(num_val * len(files)))) if 0 < num_val < 1 else int(num_val)
    if n_val >= len(files):
        raise ValueError(f"cannot hold out {n_val} of {len(files)} images and still train")
    perm = np.random.default_rng(seed).permutation(len(files))
    val = sorted(files[i] for i in perm[:n_val])
    held = set(val)
    return [f for f in files if f not in held], val


def cover_crop_box(w: int, h: int, size: int) -> Tuple[int, int, int]:
    """``crop='center'``: (side, left, top) of the centred square of the short side, resized to ``size``."""
    side = min(w, h)
    return side, (w - side) // 2, (h - side) // 2


def pad_to_square(im, size: int):
    """Images smaller than ``size`` on both sides are padded (black, centred) to a square first
    (``crop='center'`` and ``'random'``), so that the square crop does not cut away their content."""
    from PIL import Image

    w, h = im.size
    if w >= size or h >= size or w == h:
        return im
    side = max(w, h)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """Square RGB crops (uint8, (3, size, size)) from a folder of images.

    Args:
        root: folder searched recursively for jpg/png/webp/tif; ``None`` with ``source='skimage'``.
        source: ``'folder'`` or ``'skimage'`` (the photos bundled with scikit-image, for the demo).
        list_file: optional file listing the images to use (relative to ``root``).
        split: ``'all'``, ``'train'`` or ``'val'`` of a held-out split of ``num_val`` images.
        val_root: a separate validation folder: ``split='val'`` reads it, ``'train'`` all of ``root``.
        size: output side (the teacher resolution).
        crop: ``'center'`` (images smaller than ``size`` on both sides padded to a square, then
            the centred square of the short side resized to ``size``, bicubic), ``'random'``
            (random square of ``scale`` x the short side at a random place, random h-flip), or a
            release's policy from :mod:`.transforms`, e.g. ``dict(type='BrixelReleaseCanvas')``
            (the BRIXEL release's canvas, which ``'center'`` is not).
    """

    def __init__(self, root: Optional[str] = None, size: int = 1024, source: str = "folder",
                 list_file: Optional[str] = None, split: str = "all", num_val: Union[int, float] = 0,
                 val_root: Optional[str] = None, split_seed: int = 0, crop: str = "center",
                 scale: Tuple[float, float] = (0.5, 1.0), flip: bool = True, seed: int = 0,
                 max_images: Optional[int] = None):
        if isinstance(crop, dict):
            crop = TRANSFORMS.build(crop)
        elif crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center', 'random' or a policy dict(type=...), got {crop!r}")
        if split not in ("all", "train", "val"):
            raise ValueError(f"split must be all, train or val, got {split!r}")
        if source == "skimage":
            files = skimage_photo_files()
        elif source != "folder":
            raise ValueError(f"source must be 'folder' or 'skimage', got {source!r}")
        elif split == "val" and val_root is not None:
            files = list_images(val_root)
        elif root is None:
            raise ValueError("ImageFolderDataset needs root= (a folder of images)")
        else:
            files = list_images(root, list_file)
        if split != "all" and not (source == "folder" and val_root is not None):
            train, val = split_files(files, num_val, split_seed)
            files = train if split == "train" else val
        # unreadable files are left out (and not counted) before training starts
        readable, self.unreadable = readable_images(files)
        if self.unreadable:
            print_log(f"{split} images: leaving out {len(self.unreadable)} file(s) that are not readable images: "
                      + "; ".join(f"{p} ({why})" for p, why in self.unreadable.items()),
                      logger="current", level=logging.WARNING)
        self.files = readable[:max_images] if max_images else readable
        if not self.files:
            raise ValueError(f"no readable images for split {split!r} ({len(self.unreadable)} unreadable files)")
        self.size, self.crop, self.scale, self.flip, self.seed = int(size), crop, tuple(scale), flip, int(seed)
        self.metainfo = dict(num_images=len(self.files), size=self.size, split=split)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, idx: int):
        """``(image, index, failures)``: the image at ``idx`` or, if it does not decode, the next one
        that does (the batch keeps its size and a resumed run its data). ``failures`` lists the
        ``"path<TAB>reason"`` of the files passed over; the sample carries them to the main process,
        where SkippedImagesHook reports them once (a worker's copy of the dataset keeps no state)."""
        failures = []
        for k in range(len(self.files)):
            j = (idx + k) % len(self.files)
            path = self.files[j]
            try:
                return load_rgb(path), j, failures
            except Exception as e:  # any decoder error: a long run must not die on one file
                failures.append(f"{path}\t{type(e).__name__}: {e}")
        raise RuntimeError(f"none of the {len(self.files)} images could be read: "
                           + "; ".join(f.replace("\t", ": ") for f in failures))

    def transform(self, im, epoch: int, idx: int) -> torch.Tensor:
        from PIL import Image

        if not isinstance(self.crop, str):  # a release policy: deterministic, no flip
            arr = np.array(self.crop(im, self.size), dtype=np.uint8)
            return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        im = pad_to_square(im, self.size)
        w, h = im.size
        flip = False
        if self.crop == "center":
            side, left, top = cover_crop_box(w, h, self.size)
        else:
            rng = np.random.default_rng([self.seed, epoch, idx])
            side = max(1, int(round(min(w, h) * rng.uniform(*self.scale))))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            flip = self.flip and bool(rng.random() < 0.5)
        im = im.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + side, top + side),
                       reducing_gap=None)
        arr = np.array(im, dtype=np.uint8)  # a writable copy
        if flip:
            arr = arr[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()

    def __getitem__(self, key):
        epoch, idx = key if isinstance(key, tuple) else (0, key)
        im, j, failures = self._read(int(idx))
        # one string per sample, so that any collate function batches it as a list
        return {"image": self.transform(im, int(epoch), j), "index": j, "unreadable": "\n".join(failures)}


@DATA_SAMPLERS.register_module()
class ResumableSampler(Sampler):
    """Seeded shuffle per epoch, split across ranks; yields ``(epoch, index)`` for the dataset.

    ``skip(n)`` drops this rank's first ``n`` samples of the next pass: resuming at an iteration
    inside an epoch costs no image decoding (mmengine's own loop re-reads every skipped batch).
    """

    def __init__(self, dataset, shuffle: bool = True, seed: Optional[int] = None):
        self.dataset, self.shuffle = dataset, shuffle
        self.rank, self.world_size = get_dist_info()
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.num_samples = math.ceil(len(dataset) / self.world_size)
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n: int) -> None:
        self._skip = int(n)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = self.num_samples * self.world_size
        order = (order * math.ceil(total / n))[:total]  # pad so every rank gets as many
        mine = order[self.rank:total:self.world_size][self._skip:]
        self._skip = 0
        return iter([(self.epoch, i) for i in mine])

    def __len__(self) -> int:
        return self.num_samples
