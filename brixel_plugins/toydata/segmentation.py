"""Toy semantic segmentation: crops of real photos with small, thin textured shapes pasted on them.

Written in MMSegmentation's standard layout (any tool reading image/label folders can use it)::

    root/img_dir/{train,val}/0000.png   RGB photo crop with shapes
    root/ann_dir/{train,val}/0000.png   single-channel uint8 class ids (0 = background)
    root/toy_segmentation.json          the parameters it was written with

The shapes are dots of radius 2-5 px, strokes 2-3 px wide, rings 2 px thick and squares of 6-12 px,
so a feature map at stride 16 cannot draw them: the task's mIoU moves with feature resolution.
Each class has its own two-colour texture, so appearance (not only outline) tells them apart.
Every image is a pure function of (seed, split, index).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..images import skimage_photos
from .common import write_dataset_once

CLASSES = ("background", "dot", "stroke", "ring", "square")
PALETTE = ((0, 0, 0), (230, 60, 40), (40, 200, 230), (220, 60, 220), (70, 210, 70))

# per class: (colour a, colour b, pattern); pattern(rows, cols) -> bool picks colour a
_TEXTURES = {
    1: ((235, 50, 35), (250, 210, 40), lambda r, c: (r + c) % 2 == 0),           # checker, period 2
    2: ((30, 220, 235), (20, 60, 200), lambda r, c: ((r + c) // 2) % 2 == 0),    # diagonal stripes
    3: ((225, 45, 225), (250, 250, 250), lambda r, c: r % 2 == 0),               # horizontal stripes
    4: ((60, 220, 60), (10, 90, 30), lambda r, c: ((r // 3) + (c // 3)) % 2 == 0),  # checker, period 3
}
SPLITS = ("train", "val")
META_FILE = "toy_segmentation.json"


def _shape_mask(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one shape of class ``cls`` at a random place."""
    from skimage.draw import disk, polygon

    mask = np.zeros((size, size), bool)
    centre = rng.uniform(0.05 * size, 0.95 * size, 2)
    if cls == 1:  # dot
        mask[disk(tuple(centre), rng.uniform(2, 5), shape=mask.shape)] = True
    elif cls == 2:  # stroke: a thin rotated rectangle
        angle, length, width = rng.uniform(0, np.pi), rng.uniform(0.15, 0.45) * size, rng.uniform(2, 3)
        along = np.array([np.sin(angle), np.cos(angle)]) * length / 2
        across = np.array([np.cos(angle), -np.sin(angle)]) * width / 2
        corners = np.stack([centre - along - across, centre - along + across,
                            centre + along + across, centre + along - across])
        mask[polygon(corners[:, 0], corners[:, 1], shape=mask.shape)] = True
    elif cls == 3:  # ring
        radius = rng.uniform(6, 14)
        mask[disk(tuple(centre), radius, shape=mask.shape)] = True
        mask[disk(tuple(centre), radius - 2, shape=mask.shape)] = False
    elif cls == 4:  # square, rotated
        angle, half = rng.uniform(0, np.pi / 2), rng.uniform(3, 6)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = centre + np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half @ rot.T
        mask[polygon(corners[:, 0], corners[:, 1], shape=mask.shape)] = True
    else:
        raise ValueError(f"no shape for class {cls}")
    return mask


def _texture(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float texture of class ``cls``, with per-instance brightness and pixel noise."""
    a, b, pattern = _TEXTURES[cls]
    r, c = np.mgrid[:size, :size]
    tex = np.where(pattern(r, c)[..., None], np.array(a, float), np.array(b, float))
    return tex * rng.uniform(0.8, 1.2) + rng.normal(0, 8, tex.shape)


def _background(photos: Sequence[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (30-100% of the short side) of a random photo, resized to ``size``."""
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
    return np.asarray(crop, dtype=float)


def make_sample(photos: Sequence[np.ndarray], rng: np.random.Generator, size: int = 128,
                num_shapes: Tuple[int, int] = (12, 24)) -> Tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its label map (size, size) uint8; later shapes cover
    earlier ones (and their labels)."""
    img = _background(photos, rng, size)
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(num_shapes[0], num_shapes[1] + 1)):
        cls = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(cls, rng, size)
        img[mask] = _texture(cls, rng, size)[mask]
        label[mask] = cls
    return np.clip(img, 0, 255).round().astype(np.uint8), label


# the background photos (of brixel_plugins.images.SKIMAGE_PHOTOS): the generated data depend on them
BACKGROUND_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                     "ihc.png", "retina.jpg", "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png")


def load_photos() -> List[np.ndarray]:
    """The background photos present in the installed scikit-image, as RGB uint8 arrays."""
    return skimage_photos(BACKGROUND_PHOTOS)


def write_toy_segmentation(root: Union[str, Path], num_train: int = 64, num_val: int = 16,
                           size: int = 128, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (see the module docstring) and return ``root``.

    An existing dataset written with the same parameters is reused; one written with other
    parameters is refused (delete it or choose another root). The folder appears atomically:
    it is written beside ``root`` and renamed into place, so a crash never leaves half a dataset.
    """
    from PIL import Image

    root = Path(root)
    params = dict(num_train=int(num_train), num_val=int(num_val), size=int(size), seed=int(seed),
                  classes=list(CLASSES))

    def write(folder: Path) -> None:
        photos = load_photos()
        for split_id, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
            (folder / "img_dir" / split).mkdir(parents=True)
            (folder / "ann_dir" / split).mkdir(parents=True)
            for i in range(count):
                img, label = make_sample(photos, np.random.default_rng([seed, split_id, i]), size)
                Image.fromarray(img).save(folder / "img_dir" / split / f"{i:04d}.png")
                Image.fromarray(label).save(folder / "ann_dir" / split / f"{i:04d}.png")

    return write_dataset_once(root, params, META_FILE, "toy segmentation dataset", write)


def class_frequencies(root: Union[str, Path], split: str = "train") -> Dict[str, float]:
    """Fraction of pixels per class in a split (what a reader needs to judge an mIoU)."""
    from PIL import Image

    counts = np.zeros(len(CLASSES))
    for f in sorted((Path(root) / "ann_dir" / split).glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(f)).ravel(), minlength=len(CLASSES))[:len(CLASSES)]
    return {c: float(n / counts.sum()) for c, n in zip(CLASSES, counts)}
