"""Shared fixtures: a tiny real timm DINOv3 and real photos from scikit-image."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from brixel_plugins.backbones import IMAGENET_MEAN, IMAGENET_STD, FrozenDINOv3

# A real DINOv3 (timm Eva, RoPE, 4 registers, LayerScale) at a size 2 CPU cores run in ms.
# embed_dim 64 keeps BRIXEL's 16 heads x 4 points and GroupNorm(32) valid.
TINY = dict(arch="vits16", depth=4, embed_dim=64, num_heads=2)


def make_tiny_backbone(seed: int = 0, **kw) -> FrozenDINOv3:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random-init warning is expected here
        return FrozenDINOv3(**{**TINY, **kw})


@pytest.fixture(scope="session")
def tiny_backbone() -> FrozenDINOv3:
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def tiny_spec(tiny_backbone):
    return tiny_backbone.spec


def normalise(img: np.ndarray, size) -> torch.Tensor:
    """uint8 HxWx3 -> ImageNet-normalised (1,3,h,w) at ``size`` (h, w)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255.0
    t = torch.nn.functional.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (t.clamp(0, 1) - mean) / std


@pytest.fixture(scope="session")
def photo():
    """A real photograph (skimage's astronaut), ImageNet-normalised, 1x3x64x96."""
    from skimage import data

    return normalise(data.astronaut(), (64, 96))
