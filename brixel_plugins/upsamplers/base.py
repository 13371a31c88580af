"""The one interface every upsampler implements, and the registry that builds them by name.

An upsampler turns low-resolution DINOv3 maps into a denser map of the same channels:

    forward(image (B,3,H,W), layers {i: (B,D,H/16,W/16)}, backbone=None) -> (B, D, H*f/16, W*f/16)

It declares what it needs, so that :class:`~brixel_plugins.featurizer.DenseFeaturizer` (and
every consumer built on it) runs the backbone once and never cares which upsampler it holds:

- ``factor``: integer upsampling factor f of the token grid (output stride 16 / f).
- ``layer_indices``: absolute backbone layers it reads (empty if it reads none).
- ``needs_image``: whether it uses the (ImageNet-normalised) image as guidance.
- ``calls_backbone``: whether it runs the frozen backbone itself (FeatSharp's tiles, ``highres``).
- ``calibrated`` / ``calibrate(feats)`` / ``finish_calibration()``: statistics fitted from
  backbone features before training (FeatSharp's PHI-S); trivially calibrated for the rest.
"""
from __future__ import annotations

import copy
from typing import Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError

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

    # -- data-fitted statistics (FeatSharp's PHI-S); a no-op for everything else ------------
    @property
    def calibrated(self) -> bool:
        """False while statistics that must be fitted from data before use are missing."""
        return True

    def calibrate(self, feats: torch.Tensor) -> None:
        """Accumulate statistics from backbone last-layer maps (B, D, h, w)."""

    def finish_calibration(self) -> None:
        """Fit from the accumulated statistics; afterwards ``calibrated`` is True."""

    # -- the authors' released weights ------------------------------------------------------
    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """Map a released state dict to this module's keys, refusing one made for another
        model with a clear :class:`WeightFileError`. Methods with released weights override this."""
        raise WeightFileError(f"no released weight layout is known for {self.method!r} ({source})")

    def load_release_state_dict(self, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> "Upsampler":
        """Load the authors' released weights strictly (``module.`` prefixes stripped, missing
        BatchNorm counters filled: neither affects the computation)."""
        sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
        sd = self.from_release_layout(sd, source)
        for k, v in self.state_dict().items():
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = torch.zeros_like(v)
        try:
            self.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightFileError(f"{source} does not fit {self.method} for {self.spec.arch} "
                                  f"(D={self.embed_dim}): {e}") from e
        return self

    def forward(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor],
                backbone: Optional[nn.Module] = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method}, factor={self.factor}, layers={list(self.layer_indices)}"
