"""Image plumbing every part shares: reading files, ImageNet normalisation, bicubic resizing,
and the photos bundled with scikit-image that the demos, toy datasets and tests use.

DINOv3 (and so every upsampler) takes ImageNet-normalised float images (B, 3, H, W).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD

# single-channel integer modes Pillow opens 16-bit files in (PNG, TIFF); "I" is how older Pillow
# versions open a 16-bit PNG
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_rgb(path: str):
    """An image file as an 8-bit RGB PIL image; transparency is composited on white, 16-bit grey
    images are scaled to 8 bits (Pillow's own conversion would clip them to white)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in _SIXTEEN_BIT_MODES:
            grey = np.asarray(im, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
            return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
        if im.mode == "F":
            raise ValueError(f"{path} is a floating-point image (mode F) with no defined value range; "
                             f"save it as an 8- or 16-bit image")
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return im.convert("RGB")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (1, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 in 0..255, or float in 0..1 -> ImageNet-normalised float32."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalise(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (3, H, W) -> uint8 (H, W, 3)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (image.detach().cpu().float() * std + mean).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def resize(x: torch.Tensor, size: Union[int, Sequence[int]]) -> torch.Tensor:
    """Bicubic, antialiased (as the BRIXEL release makes its student input) to ``size`` (an int:
    square). (B, C, H, W) -> (B, C, *size); a no-op at the same size."""
    hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bicubic", align_corners=False, antialias=True)


# Photos bundled in the scikit-image wheel, by file name in ``skimage/data`` (others in
# skimage.data are fetched on demand and are not available offline). Colour photographs first;
# the grey ones are read as RGB.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
                  "camera.png", "coins.png", "moon.png", "page.png", "brick.png", "grass.png",
                  "gravel.png", "clock_motion.png", "text.png", "cell.png")


def skimage_photo_files(names: Sequence[str] = SKIMAGE_PHOTOS) -> List[str]:
    """Paths of the photos ``names`` (file names from :data:`SKIMAGE_PHOTOS`) that the installed
    scikit-image holds, in that order."""
    import skimage.data

    unknown = sorted(set(names) - set(SKIMAGE_PHOTOS))
    if unknown:
        raise ValueError(f"not photos bundled with scikit-image: {unknown}; choose from {SKIMAGE_PHOTOS}")
    root = Path(skimage.data.__file__).parent
    return [str(root / n) for n in names if (root / n).is_file()]


def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> List[np.ndarray]:
    """The photos ``names`` present in the installed scikit-image as RGB uint8 (H, W, 3) arrays."""
    photos = [np.asarray(load_rgb(f)) for f in skimage_photo_files(names)]
    if not photos:
        raise FileNotFoundError(f"none of the scikit-image photos {list(names)} is installed")
    return photos
