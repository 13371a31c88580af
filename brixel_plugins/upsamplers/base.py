"""The one interface every upsampler implements, and the registry that builds them by name.

An upsampler turns low-resolution DINOv3 maps into a denser map of the same channels:

    forward(image (B,3,H,W), layers {i: (B,D,H/16,W/16)}, backbone=None) -> (B, D, H*f/16, W*f/16)

It declares what it needs, so that :class:`~brixel_plugins.featurizer.DenseFeaturizer` (and
every consumer built on it) runs the backbone once and never cares which upsampler it holds:

- ``factor``: integer upsampling factor f of the token grid (output stride 16 / f).
- ``layer_indices``: absolute backbone layers it reads (empty if it reads none).
- ``needs_image``: whether it uses the (ImageNet-normalised) image as guidance.
- ``calls_backbone``: whether it runs the frozen backbone itself (FeatSharp's tiles, ``highres``).
"""
from __future__ import annotations

import copy
from typing import Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from ..backbones.dinov3 import BackboneSpec

UPSAMPLERS: Dict[str, Type["Upsampler"]] = {}


def register_upsampler(name: str) -> Callable[[Type["Upsampler"]], Type["Upsampler"]]:
    """Class decorator: make an upsampler buildable by ``name`` (``dict(type=name, ...)``)."""

    def deco(cls: Type["Upsampler"]) -> Type["Upsampler"]:
        if name in UPSAMPLERS and UPSAMPLERS[name] is not cls:
            raise KeyError(f"upsampler {name!r} is already registered by {UPSAMPLERS[name].__qualname__}")
        cls.method = name
        UPSAMPLERS[name] = cls
        return cls

    return deco


def list_upsamplers() -> Tuple[str, ...]:
    return tuple(sorted(UPSAMPLERS))


def build_upsampler(cfg: Mapping, spec: BackboneSpec) -> "Upsampler":
    """Build from ``dict(type='brixel', **kwargs)`` for a backbone described by ``spec``."""
    cfg = dict(copy.deepcopy(cfg))
    name = cfg.pop("type", None)
    if name not in UPSAMPLERS:
        raise KeyError(f"unknown upsampler type {name!r}; registered: {list(list_upsamplers())}")
    return UPSAMPLERS[name](spec, **cfg)


class Upsampler(nn.Module):
    """Base class. Subclasses call ``super().__init__(spec, factor, **config)`` where
    ``config`` holds every constructor argument needed to rebuild the module (it is saved in
    weight files), and implement :meth:`forward`."""

    method: ClassVar[str] = ""
    needs_image: ClassVar[bool] = False
    calls_backbone: ClassVar[bool] = False

    def __init__(self, spec: BackboneSpec, factor: int, layer_indices: Tuple[int, ...] = (), **config):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"{type(self).__name__}: factor must be a positive integer, got {factor!r}")
        self.spec = spec
        self.factor = int(factor)
        self.layer_indices = tuple(int(i) for i in layer_indices)
        bad = [i for i in self.layer_indices if not 0 <= i < spec.depth]
        if bad:
            raise ValueError(f"{type(self).__name__}: layers {bad} do not exist in a depth-{spec.depth} backbone")
        self.config = dict(factor=self.factor, **config)

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def output_stride(self) -> float:
        return self.spec.patch_size / self.factor

    @property
    def last_layer(self) -> int:
        return self.spec.depth - 1

    def output_size(self, image_hw: Tuple[int, int]) -> Tuple[int, int]:
        h, w = image_hw
        p = self.spec.patch_size
        return h // p * self.factor, w // p * self.factor

    def forward(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor],
                backbone: Optional[nn.Module] = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method}, factor={self.factor}, layers={list(self.layer_indices)}"
