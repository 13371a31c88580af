"""The one interface every upsampler implements, and the registry that builds them by name.

An upsampler turns low-resolution DINOv3 maps into a denser map of the same channels::

    forward(image, layers, backbone=None, image_hr=None) -> (B, D, f*H/16, f*W/16)

      image     (B, 3, H, W)    ImageNet-normalised: the image the backbone saw, at the working
                                resolution (H, W multiples of 16; h, w = H/16, W/16)
      layers    {i: (B, D, h, w)}  the backbone's normalised maps of ``image`` for the layers
                                the upsampler declares in ``layer_indices``
      backbone  FrozenDINOv3     for methods that run it themselves (FeatSharp's tiles, ``highres``)
      image_hr  (B, 3, H', W') or None
                                the same picture at the resolution the user has (any size, usually
                                H' >= H, W' >= W); None means ``image``.

The high-resolution contract: a user's image is often larger than the backbone's working
resolution (a 1024 px photo, DINOv3 run at 512). The backbone sees the working image; methods
whose point is real pixels read them from ``image_hr`` (``uses_image_hr = True``): JBU's guidance,
FeatSharp's u x u tiles, ``highres``. Methods trained against a fixed input resolution (BRIXEL's
spatial prior, LiFT's image branch) keep reading ``image``, so they see what they were trained
on. The output grid is always ``factor`` x the token grid of ``image``, whatever ``image_hr`` is.

Each upsampler declares what it needs, so that :class:`~brixel_plugins.featurizer.DenseFeaturizer`
(and every consumer built on it) runs the backbone once and never cares which upsampler it holds:

- ``factor``: integer upsampling factor f of the token grid (output stride 16 / f).
- ``layer_indices``: absolute backbone layers it reads (empty if it reads none).
- ``needs_image``: whether it uses the (ImageNet-normalised) image at all.
- ``uses_image_hr``: whether its pixels come from ``image_hr`` when one is given.
- ``calls_backbone``: whether it runs the frozen backbone itself (FeatSharp's tiles, ``highres``).
- ``calibrated`` / ``calibrate(feats)`` / ``finish_calibration()``: statistics fitted from
  backbone features before training (FeatSharp's PHI-S); trivially calibrated for the rest.
- ``zero_start`` (learned methods, a constructor option saved with the weights):
  :meth:`Upsampler.from_interpolation` makes the untrained output exactly bilinear interpolation
  (the method's last projection starts at zero).
- ``target_transform(feats)``: the teacher's features in the space the output is trained in
  (identity except for methods that learn a correction of the teacher).
"""
from __future__ import annotations

import copy
from typing import Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

import torch
import torch.nn.functional as F
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


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a projection's weight and bias (the last layer of a zero-start detail branch)."""
    nn.init.zeros_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


class DetailGate(nn.Module):
    """The zero start of methods whose output does not end in a projection that could start at
    zero (JBU, FeatSharp): a per-channel share of what the method changes, starting at none.

    ``(B, C, H, W) -> scale * x`` with ``scale = gain * gate`` (C,), ``gate`` a zero-initialised
    parameter. Why the gain: Adam-family optimisers move each parameter by about ``lr`` per step
    whatever its gradient, so a gate stored as the scale itself needs ~1/lr steps to open (1000
    at lr 1e-3; measured on the tiny backbone, a gated JBU stayed within 2% of bilinear after
    40 steps at lr 3e-3), while a zero-initialised projection, many weights per output, opens in
    tens. With ``gain`` the gate opens ``gain`` times faster (the same JBU: 12% better than
    bilinear in 40 steps). Tuned for the Adam family every recipe here uses.
    """

    def __init__(self, dim: int, gain: float = 32.0):
        super().__init__()
        self.gain = float(gain)
        self.gate = nn.Parameter(torch.zeros(dim))

    @property
    def scale(self) -> torch.Tensor:
        return self.gain * self.gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale.to(x.dtype).view(1, -1, 1, 1) * x

    def extra_repr(self) -> str:
        return f"dim={self.gate.numel()}, gain={self.gain:g}"


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
    uses_image_hr: ClassVar[bool] = False
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
        # a start that cannot be worse than interpolation (see from_interpolation)
        self.zero_start = bool(config.get("zero_start", False))

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

    # -- training hooks ----------------------------------------------------------------------
    def interpolation_base(self, last: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Bilinear enlargement of the last-layer map ``last`` (B, D, h, w) to ``size``."""
        return F.interpolate(last, size=size, mode="bilinear", align_corners=False)

    def from_interpolation(self, detail: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The zero start (``zero_start=True``: the default of new trainings, off for the authors'
        weights): ``interpolation_base(last) + detail``, where ``detail`` (B, D, f*h, f*w) ends in a
        learned projection the method zero-initialises (:func:`zero_init`): LiFT's ``outc``,
        BRIXEL's ``head.out_conv``, or a :class:`DetailGate` on the method's difference to the
        base (JBU, FeatSharp). At step 0
        the output IS bilinear interpolation; training adds detail from there, so the start
        cannot be worse than interpolation. Without ``zero_start`` it returns ``detail`` as is
        (the method's own output)."""
        if not self.zero_start:
            return detail
        return self.interpolation_base(last, detail.shape[-2:]).to(detail.dtype) + detail

    def target_transform(self, feats: torch.Tensor) -> torch.Tensor:
        """The teacher's features (N, D, h, w) mapped into the space this upsampler's output is
        trained to match; identity by default. Distillation objectives apply it to every teacher
        map they use as a target (``DistillModel.target``). A method that learns a correction of
        the teacher overrides it, e.g. FeatSharp's de-bias buffer: its target is the backbone's
        features plus the learned buffer (resized to the grid of ``feats``), so the upsampler is
        trained against the same de-biased space its own low-res and tile inputs live in.
        Must be differentiable in its own parameters (they train through it) and keep the shape."""
        return feats

    def for_export(self) -> "Upsampler":
        """This upsampler as weight files hold it (``save_upsampler`` writes this): ``self``, or
        for a method that trains in a reparametrised form (FeatSharp's spectral reparametrisation)
        a copy with plain weights and the config that rebuilds it."""
        return self

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

    def pixels(self, image: torch.Tensor, image_hr: Optional[torch.Tensor]) -> torch.Tensor:
        """The image this method takes its pixels from: ``image_hr`` if it uses one and one is
        given, else the working ``image``."""
        return image_hr if (self.uses_image_hr and image_hr is not None) else image

    def forward(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor],
                backbone: Optional[nn.Module] = None,
                image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method}, factor={self.factor}, layers={list(self.layer_indices)}"
