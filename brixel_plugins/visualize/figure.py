"""The PCA figure: upsamplers side by side with DINOv3's own low- and high-resolution features.

:func:`pca_figure` is the picture code (tools/visualize.py and the demo call it): per image
(centre-cropped to a square) DINOv3 at ``hr_size`` gives the target map, whose PCA basis
(:class:`brixel_plugins.visualize.pca.PCABasis`) colours every column, so equal colours mean equal features
across columns: the image, DINOv3 at ``size``, DINOv3 at ``hr_size``, then every upsampler applied
to the ``size`` image. :func:`compare_methods` builds the upsamplers from names or weight files
first (what the command line gives).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..backbones import FrozenDINOv3
from ..files.method_spec import build_method, check_methods, parse_method, prepare_upsampler
from ..images import load_rgb, normalise, resize, to_tensor
from ..upsamplers import Upsampler
from .pca import pca_row, save_grid

EXAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea")  # scikit-image photo names: tools/visualize.py's default
Picture = Union[str, Path, np.ndarray, torch.Tensor]


def load_image(src: Union[str, Path]) -> Tuple[str, np.ndarray]:
    """A file path, or the name of a photo bundled with scikit-image -> (name, uint8 (H, W, 3))."""
    path = Path(src)
    if path.is_file():
        return path.stem, np.asarray(load_rgb(str(path)))
    from skimage import data

    loader = getattr(data, str(src), None)
    if loader is None or not callable(loader):
        raise FileNotFoundError(f"{src!r} is neither an image file nor a scikit-image photo "
                                f"(e.g. {', '.join(EXAMPLE_PHOTOS)})")
    img = np.asarray(loader())
    if img.ndim == 2:  # grayscale photos (camera, moon)
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"scikit-image {src!r} is not a photo (shape {img.shape})")
    img = img[..., :3]
    if img.dtype != np.uint8:  # some bundled images are float in [0, 1]
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    return str(src), img


def as_uint8_hwc(picture: Picture) -> np.ndarray:
    """A picture as uint8 (H, W, 3): a path or scikit-image name, a uint8 (H, W, 3) array, or a
    (3, H, W) tensor, uint8 or float in [0, 1] (what image datasets return)."""
    if isinstance(picture, (str, Path)):
        return load_image(picture)[1]
    if isinstance(picture, torch.Tensor):
        if picture.ndim != 3 or picture.shape[0] != 3:
            raise ValueError(f"a picture tensor must be (3, H, W), got {tuple(picture.shape)}")
        t = picture.detach().cpu()
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        return t.to(torch.uint8).permute(1, 2, 0).numpy()
    arr = np.asarray(picture)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"a picture array must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def square_input(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> centre square crop, bicubic antialiased resize, ImageNet-normalised (1, 3, size, size)."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    t = to_tensor(img[top:top + s, left:left + s]).float() / 255
    return normalise(resize(t, size).clamp(0, 1))


@torch.no_grad()
def pca_figure(pictures: Sequence[Picture], backbone: FrozenDINOv3,
               upsamplers: Union[Mapping[str, Upsampler], Sequence[Tuple[str, Upsampler]]],
               out: Union[str, Path], size: int = 256, hr_size: int = 1024, cell: int = 256,
               row_labels: Optional[Sequence[str]] = None) -> Path:
    """Write one PNG grid and return its path.

    Args:
        pictures: one row each (see :func:`as_uint8_hwc`), centre-cropped to a square.
        backbone: the frozen DINOv3; its device is used.
        upsamplers: ``{column label: upsampler}`` (or ``(label, upsampler)`` pairs), ready to run
            (trained or loaded; FeatSharp's PHI-S fitted). Each gets the ``size`` image, its
            backbone layers and the ``hr_size`` image as ``image_hr``.
        out: the PNG path.
        size, hr_size: the low-resolution input and the PCA reference resolution (px, multiples of 16).
        cell: pixels per grid cell.
        row_labels: one per picture (default: file stems / photo names, else ``#i``).

    Columns: image | DINOv3 ``size`` | DINOv3 ``hr_size`` (the PCA reference) | each upsampler.
    """
    if size % 16 or hr_size % 16:
        raise ValueError(f"size ({size}) and hr_size ({hr_size}) must be multiples of 16")
    from ..featurizer import backbone_layers

    ups = list(upsamplers.items() if isinstance(upsamplers, Mapping) else upsamplers)
    device = next(backbone.parameters()).device
    if row_labels is None:
        row_labels = [Path(p).stem if isinstance(p, (str, Path)) else f"#{i}" for i, p in enumerate(pictures)]
    if len(row_labels) != len(pictures):
        raise ValueError(f"{len(row_labels)} row labels for {len(pictures)} pictures")
    rows, shapes = [], []
    for picture in pictures:
        img = as_uint8_hwc(picture)
        lr, hr = square_input(img, size).to(device), square_input(img, hr_size).to(device)
        ref = backbone.last_layer_map(hr)[0].float().cpu()
        maps = [backbone.last_layer_map(lr)[0].float().cpu(), ref]
        layers = backbone_layers(backbone, lr, [u for _, u in ups])  # one pass for every upsampler
        maps += [up(lr, layers, backbone, image_hr=hr)[0].float().cpu() for _, up in ups]
        shapes = [tuple(m.shape[-2:]) for m in maps[2:]]
        rows.append(pca_row(ref, maps, image=lr[0].cpu(), size=(cell, cell)))
    g, hg = size // 16, hr_size // 16
    labels = ["image", f"DINOv3 {size}px {g}x{g}", f"DINOv3 {hr_size}px {hg}x{hg} (PCA ref)"]
    labels += [f"{label} {h}x{w}" for (label, _), (h, w) in zip(ups, shapes)]
    return save_grid(rows, labels, out, row_labels=list(row_labels), cell=cell)


def build_upsamplers(methods: Sequence[str], spec, factor: int) -> List[Tuple[str, Upsampler]]:
    """Names (``lift``, ``lift:factor=2``) built at ``factor`` unless given, or upsampler weight files."""
    specs = [parse_method(m) for m in methods]
    check_methods(specs)
    out = []
    for s in specs:
        up = build_method(s, spec, factor).eval()
        label = f"{up.method} ({s.label})" if s.path is not None else s.label
        if s.path is None and any(True for _ in up.parameters()):
            label += " untrained"  # built by name: random weights, say so in the picture
        out.append((label, up))
    return out


@torch.no_grad()
def compare_methods(pictures: Sequence[Picture], backbone: FrozenDINOv3, methods: Sequence[str],
                    out: Union[str, Path], size: int = 256, hr_size: int = 1024, cell: int = 256,
                    device: Union[str, torch.device] = "cpu") -> Path:
    """:func:`pca_figure` for upsamplers given by registry name (``name:key=value``) or weight
    file, built at ``hr_size // size``; untrained ones that need data statistics get them from
    the first picture."""
    device = torch.device(device)
    backbone = backbone.to(device)
    ups = [(label, up.to(device)) for label, up in build_upsamplers(methods, backbone.spec, max(1, hr_size // size))]
    first = square_input(as_uint8_hwc(pictures[0]), size).to(device)
    for _, up in ups:
        prepare_upsampler(up, backbone, first)  # e.g. FeatSharp's PHI-S, if built untrained
    return pca_figure(pictures, backbone, ups, out, size=size, hr_size=hr_size, cell=cell)
