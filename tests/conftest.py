"""Shared fixtures: a tiny real timm DINOv3 and real photos from scikit-image."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from brixel_plugins import images
from brixel_plugins.backbones import FrozenDINOv3

# A real DINOv3 (timm Eva, RoPE, 4 registers, LayerScale) at a size 2 CPU cores run in ms.
# embed_dim 64 keeps BRIXEL's 16 heads x 4 points and GroupNorm(32) valid.
TINY = dict(arch="vits16", depth=4, embed_dim=64, num_heads=2)
TINY_DIMS = {k: v for k, v in TINY.items() if k != "arch"}  # the sizes that override a vits16 config


def tiny_cfg_options(prefix: str = "model.backbone") -> list:
    """``--cfg-options`` that shrink a config's ``vits16`` backbone at ``prefix`` to :data:`TINY`."""
    return [f"{prefix}.{k}={v}" for k, v in TINY_DIMS.items()]


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
    return images.normalise(images.resize(images.to_tensor(img).float() / 255.0, size).clamp(0, 1))


@pytest.fixture(scope="session")
def photo():
    """A real photograph (skimage's astronaut), ImageNet-normalised, 1x3x64x96."""
    from skimage import data

    return normalise(data.astronaut(), (64, 96))
