"""Toy instance segmentation in COCO format: textured shapes with instance masks on real photos.

Written in COCO's layout, so any COCO reader (Detectron2's ``load_coco_json``, pycocotools) uses it::

    root/{train,val}/0000.png          RGB photo crop with shapes pasted on it
    root/annotations/{train,val}.json  COCO instances: boxes, polygon masks, areas, categories
    root/toy_instances.json            the parameters it was written with

Four categories, each with its own two-colour texture: ``disc``, ``square``, ``triangle`` and
``bar`` (a stroke 2-4 px wide). About half of the discs, squares and triangles are small
(5-12 px across), so a stride-16 feature map holds several of them in one cell: box and mask AP
move with feature resolution. Shapes do not overlap, so every mask is exactly its polygon, and
the pasted pixels are rasterised from that polygon by pycocotools, the same code that rasterises
it for evaluation. Every image is a pure function of (seed, split, index).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..images import skimage_photos
from .common import write_dataset_once

CATEGORIES = ("disc", "square", "triangle", "bar")
SPLITS = ("train", "val")
META_FILE = "toy_instances.json"

# per category id: (colour a, colour b, pattern(rows, cols) -> bool picks colour a)
_TEXTURES = {
    1: ((235, 60, 40), (250, 200, 40), lambda r, c: (r + c) % 2 == 0),              # checker
    2: ((40, 210, 230), (20, 60, 190), lambda r, c: ((r + c) // 2) % 2 == 0),       # diagonal stripes
    3: ((220, 50, 220), (250, 250, 250), lambda r, c: r % 2 == 0),                  # horizontal stripes
    4: ((70, 220, 70), (10, 80, 30), lambda r, c: ((r // 2) + (c // 2)) % 2 == 0),  # coarse checker
}


def _regular_polygon(centre: np.ndarray, radius: float, sides: int, angle: float) -> np.ndarray:
    t = angle + np.arange(sides) * 2 * np.pi / sides
    return centre + radius * np.stack([np.cos(t), np.sin(t)], 1)


def shape_polygon(category: int, rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    """(N, 2) polygon (x, y) of one shape of ``category`` (1-based) around ``centre``."""
    small = rng.random() < 0.5
    radius = rng.uniform(2.5, 6) if small else rng.uniform(6, 16)
    angle = rng.uniform(0, 2 * np.pi)
    if category == 1:
        return _regular_polygon(centre, radius, 16, angle)
    if category == 2:
        return _regular_polygon(centre, radius, 4, angle)
    if category == 3:
        return _regular_polygon(centre, radius * 1.2, 3, angle)
    if category == 4:
        length, width = rng.uniform(14, 44), rng.uniform(2, 4)
        along = np.array([np.cos(angle), np.sin(angle)]) * length / 2
        across = np.array([-np.sin(angle), np.cos(angle)]) * width / 2
        return np.stack([centre - along - across, centre - along + across,
                         centre + along + across, centre + along - across])
    raise ValueError(f"no shape for category id {category}; ids are 1..{len(CATEGORIES)}")


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of a polygon, rasterised as COCO evaluation rasterises it."""
    from pycocotools import mask as mask_util

    rle = mask_util.frPyObjects([polygon.ravel().tolist()], height, width)
    return mask_util.decode(mask_util.merge(rle)).astype(bool)


def _texture(category: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float texture with per-instance brightness, offset and pixel noise."""
    a, b, pattern = _TEXTURES[category]
    r, c = np.mgrid[:height, :width] + rng.integers(0, 4, 2)[:, None, None]
    tex = np.where(pattern(r, c)[..., None], np.array(a, float), np.array(b, float))
    return tex * rng.uniform(0.75, 1.15) + rng.normal(0, 8, tex.shape)


def _background(photos: Sequence[np.ndarray], rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop (30-100% of the photo) of a random photo, resized to (height, width)."""
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    scale = rng.uniform(0.3, 1.0) * min(h / height, w / width)
    ch, cw = max(1, int(height * scale)), max(1, int(width * scale))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(photo[y:y + ch, x:x + cw]).resize((width, height), Image.BICUBIC)
    return np.asarray(crop, dtype=float)


def make_sample(photos: Sequence[np.ndarray], rng: np.random.Generator, height: int = 128, width: int = 128,
                num_shapes: Tuple[int, int] = (4, 10)) -> Tuple[np.ndarray, List[Dict]]:
    """One image (height, width, 3) uint8 and its instances ``[{category_id, polygon (N, 2), mask}]``.

    Shapes are placed where they do not touch earlier ones (1 px apart at least); a shape that
    finds no free place in 20 tries is skipped.
    """
    img = _background(photos, rng, height, width)
    taken = np.zeros((height, width), bool)
    instances = []
    for _ in range(rng.integers(num_shapes[0], num_shapes[1] + 1)):
        category = int(rng.integers(1, len(CATEGORIES) + 1))
        for _try in range(20):
            centre = rng.uniform([4, 4], [width - 4, height - 4])
            poly = shape_polygon(category, rng, centre)
            # rounded as stored in the JSON, so the pasted pixels are exactly the annotated mask
            poly = np.stack([poly[:, 0].clip(0, width), poly[:, 1].clip(0, height)], 1).round(2)
            mask = polygon_mask(poly, height, width)
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:-1] |= mask[1:]
            grown[:, 1:] |= grown[:, :-1]
            grown[:, :-1] |= grown[:, 1:]
            if mask.sum() >= 6 and not (grown & taken).any():
                break
        else:
            continue
        taken |= mask
        img[mask] = _texture(category, rng, height, width)[mask]
        instances.append(dict(category_id=category, polygon=poly, mask=mask))
    return np.clip(img, 0, 255).round().astype(np.uint8), instances


def coco_annotation(instance: Dict, ann_id: int, image_id: int) -> Dict:
    """The COCO record of one instance from :func:`make_sample`."""
    ys, xs = np.nonzero(instance["mask"])
    x0, y0 = float(xs.min()), float(ys.min())
    return dict(id=ann_id, image_id=image_id, category_id=instance["category_id"], iscrowd=0,
                bbox=[x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
                area=float(instance["mask"].sum()),
                segmentation=[instance["polygon"].ravel().tolist()])


# the background photos (of brixel_plugins.images.SKIMAGE_PHOTOS): the generated data depend on them
BACKGROUND_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "motorcycle_right.png", "brick.png", "grass.png", "gravel.png", "camera.png")


def load_photos() -> List[np.ndarray]:
    """The background photos present in the installed scikit-image, as RGB uint8 arrays."""
    return skimage_photos(BACKGROUND_PHOTOS)


def write_split(folder: Path, split: str, split_id: int, count: int, photos, size: Tuple[int, int], seed: int) -> None:
    from PIL import Image

    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        img, instances = make_sample(photos, np.random.default_rng([seed, split_id, i]), *size)
        name = f"{i:04d}.png"
        Image.fromarray(img).save(folder / split / name)
        images.append(dict(id=i + 1, file_name=name, height=size[0], width=size[1]))
        annotations += [coco_annotation(inst, len(annotations) + k + 1, i + 1) for k, inst in enumerate(instances)]
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=k + 1, name=n) for k, n in enumerate(CATEGORIES)])
    (folder / "annotations").mkdir(exist_ok=True)
    (folder / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def write_toy_instances(root: Union[str, Path], num_train: int = 64, num_val: int = 16,
                        size: Union[int, Tuple[int, int]] = 128, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (see the module docstring) and return ``root``.

    An existing dataset written with the same parameters is reused; one written with other
    parameters is refused (delete it or choose another root). The folder appears atomically: it
    is written beside ``root`` and renamed into place, so a crash never leaves half a dataset,
    and of two processes writing at once, one result stays.
    """
    root = Path(root)
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    params = dict(num_train=int(num_train), num_val=int(num_val), size=list(size), seed=int(seed),
                  categories=list(CATEGORIES))

    def write(folder: Path) -> None:
        photos = load_photos()
        for split_id, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
            write_split(folder, split, split_id, count, photos, size, seed)

    return write_dataset_once(root, params, META_FILE, "toy instance dataset", write)


def split_files(root: Union[str, Path], split: str) -> Tuple[Path, Path]:
    """(annotation json, image folder) of ``split`` under a dataset written by :func:`write_toy_instances`."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; the toy dataset has {SPLITS}")
    root = Path(root)
    return root / "annotations" / f"{split}.json", root / split
