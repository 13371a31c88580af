"""PCA pictures comparing upsamplers with DINOv3's own high-resolution features.

Per image (centre-cropped to a square): DINOv3 at ``hr_size`` gives the target map, whose
PCA basis (:class:`brixel_plugins.viz.PCABasis`) colours every column, so equal colours mean
equal features across columns: the image, DINOv3 at ``size``, DINOv3 at ``hr_size``, then
every upsampler applied to the ``size`` image.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

from .backbones import FrozenDINOv3
from .images import load_rgb, normalise, resize, to_tensor
from .viz import pca_row, save_grid

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea")


def load_image(src: Union[str, Path]) -> Tuple[str, np.ndarray]:
    """A file path, or the name of a photo bundled with scikit-image -> (name, uint8 (H, W, 3))."""
    path = Path(src)
    if path.is_file():
        return path.stem, np.asarray(load_rgb(str(path)))
    from skimage import data

    loader = getattr(data, str(src), None)
    if loader is None or not callable(loader):
        raise FileNotFoundError(f"{src!r} is neither an image file nor a scikit-image photo "
                                f"(e.g. {', '.join(SKIMAGE_PHOTOS)})")
    img = np.asarray(loader())
    if img.ndim == 2:  # grayscale photos (camera, moon)
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"scikit-image {src!r} is not a photo (shape {img.shape})")
    img = img[..., :3]
    if img.dtype != np.uint8:  # some bundled images are float in [0, 1]
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
    return str(src), img


def square_input(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> centre square crop, bicubic antialiased resize, ImageNet-normalised (1, 3, size, size)."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    t = to_tensor(img[top:top + s, left:left + s]).float() / 255
    return normalise(resize(t, size).clamp(0, 1))


def build_upsamplers(methods: Sequence[str], spec, factor: int) -> List[Tuple[str, torch.nn.Module]]:
    """Names (``lift``, ``lift:factor=2``) built at ``factor`` unless given, or upsampler weight files."""
    from .benchmark import build_method, check_methods, parse_method

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
def visualize(images: Sequence[Union[str, Path]], backbone: FrozenDINOv3, methods: Sequence[str],
              out: Union[str, Path], size: int = 256, hr_size: int = 1024, cell: int = 256,
              device: Union[str, torch.device] = "cpu") -> Path:
    """Write one PNG grid: a row per image, columns image | DINOv3 size | DINOv3 hr_size | methods."""
    if size % 16 or hr_size % 16:
        raise ValueError(f"size ({size}) and hr_size ({hr_size}) must be multiples of 16")
    from .benchmark import prepare_upsampler
    from .featurizer import backbone_layers

    device = torch.device(device)
    backbone = backbone.to(device)
    factor = max(1, hr_size // size)
    ups = [(label, up.to(device)) for label, up in build_upsamplers(methods, backbone.spec, factor)]
    g, hg = size // 16, hr_size // 16
    labels = ["image", f"DINOv3 {size}px {g}x{g}", f"DINOv3 {hr_size}px {hg}x{hg} (PCA ref)"]
    rows, names = [], []
    for src in images:
        name, img = load_image(src)
        lr, hr = square_input(img, size).to(device), square_input(img, hr_size).to(device)
        ref = backbone.last_layer(hr)[0].cpu()
        maps = [backbone.last_layer(lr)[0].cpu(), ref]
        layers = backbone_layers(backbone, lr, [u for _, u in ups])  # one pass for every method
        for _, up in ups:
            prepare_upsampler(up, backbone, lr)  # e.g. FeatSharp's PHI-S, if built untrained
        for _, up in ups:
            maps.append(up(lr, layers, backbone)[0].float().cpu())
        rows.append(pca_row(ref, maps, image=lr[0].cpu(), size=(cell, cell)))
        names.append(name)
    labels += [f"{label} {m.shape[-2]}x{m.shape[-1]}" for (label, _), m in zip(ups, maps[2:])]
    return save_grid(rows, labels, out, row_labels=names, cell=cell)
