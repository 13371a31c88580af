"""The one interface every upsampler implements, and the registry that builds them by name.

An upsampler turns low-resolution DINOv3 maps into a denser map of the same channels::

    forward(image, layers, backbone=None, image_hr=None, output_size=None) -> (B, D, H_out, W_out)

      image     (B, 3, H, W)    ImageNet-normalised: the image the backbone saw, at the working
                                resolution (H, W multiples of 16; h, w = H/16, W/16)
      layers    {i: (B, D, h, w)}  the backbone's normalised maps of ``image`` for the layers
                                the upsampler declares in ``layer_indices``
      backbone  FrozenDINOv3     for methods that run it themselves (FeatSharp's tiles, ``highres``)
      image_hr  (B, 3, H', W') or None
                                the same picture at the resolution the user has (any size, usually
                                H' >= H, W' >= W); None means ``image``.
      output_size (H_out, W_out) or None
                                None: ``factor`` x the token grid, (f*H/16, f*W/16). Any other size
                                only where the method supports it (``any_output_size``); the rest
                                refuse it with a ValueError naming the method and the one size
                                they give (a size equal to ``factor`` x the grid is always accepted).

The high-resolution contract: a user's image is often larger than the backbone's working
resolution (a 1024 px photo, DINOv3 run at 512). The backbone sees the working image; methods
whose point is real pixels read them from ``image_hr`` (``uses_image_hr = True``): JBU's guidance,
FeatSharp's u x u tiles, ``highres``. Methods trained against a fixed input resolution (BRIXEL's
spatial prior, LiFT's image branch) keep reading ``image``, so they see what they were trained
on. Without ``output_size`` the output grid is ``factor`` x the token grid of ``image``, whatever
``image_hr`` is.

Each upsampler declares what it needs, so that :class:`~brixel_plugins.featurizer.DenseFeaturizer`
(and every consumer built on it) runs the backbone once and never cares which upsampler it holds:

- ``factor``: integer upsampling factor f of the token grid (output stride 16 / f);
  ``fixed_factor`` (class attribute): the only factor a method builds at (BRIXEL: 4; ``none``: 1),
  None where the constructor's ``factor`` is free.
- ``any_output_size`` (class attribute): whether ``forward`` honours any ``output_size``
  (bilinear / bicubic / nearest resizing, AnyUp's attention); False where the method's output is
  built for ``factor`` x the grid (BRIXEL, LiFT, JBU, FeatSharp, ``highres``, ``none``).
  :meth:`Upsampler.output_size` is the one check. In the :meth:`Upsampler.forward` template such a
  method's :meth:`Upsampler.detail_map` receives the resolved size as the keyword ``output_size``.
- ``layer_indices``: absolute backbone layers it reads (empty if it reads none).
- ``needs_image``: whether it uses the (ImageNet-normalised) image at all.
- ``uses_image_hr``: whether its pixels come from ``image_hr`` when one is given.
- ``calls_backbone``: whether it runs the frozen backbone itself (FeatSharp's tiles, ``highres``).
- ``calibrated`` / ``calibrate(feats)`` / ``finish_calibration()``: statistics fitted from
  backbone features before training (the protocol of :mod:`~brixel_plugins.upsamplers.layers.calibration`;
  FeatSharp's PHI-S); trivially calibrated for the rest.
- ``zero_start`` (learned methods, a constructor option saved with the weights): the untrained
  output is exactly bilinear interpolation. One mechanism for every learned method, the
  :meth:`Upsampler.forward` template ``output = base + detail``: the base class computes the base
  once (with ``zero_start`` the bilinear enlargement of the map the method upsamples) and hands
  it to the method's :meth:`Upsampler.detail_map`, whose last step starts at zero
  (:func:`zero_init` on its projection, or a :class:`DetailGate`).
- ``target_transform(feats)``: the teacher's features in the space the output is trained in
  (identity except for methods that learn a correction of the teacher).
"""
from __future__ import annotations

import copy
import numbers
import os
from typing import Callable, ClassVar, Dict, Mapping, NamedTuple, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from .layers.calibration import Calibration
from .layers.layout import accumulate_pointwise

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


def any_size_upsamplers() -> Tuple[str, ...]:
    """The registered methods that give any ``output_size`` (``any_output_size``), for messages."""
    return tuple(n for n in list_upsamplers() if UPSAMPLERS[n].any_output_size)


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


class LastProjection(NamedTuple):
    """A detail map whose last step, a 1x1 convolution ``conv`` (C -> D), is still to be applied
    to ``x`` (B, H, W, C) (pixel-major, contiguous). :meth:`Upsampler.compose` applies it onto
    the base as one matrix multiply-accumulate, so the D-wide output is written once: ``base +
    bias`` in one pass, then the product added in place, instead of a bias broadcast, the product
    and the addition of the base (three passes over the largest map of a forward; what that costs
    on CPU is measured in docs/benchmark.md)."""

    x: torch.Tensor
    conv: nn.Conv2d

    def onto(self, base: Optional[torch.Tensor]) -> torch.Tensor:
        """``base + conv(x)`` (``conv(x)`` without a base): (B, D, H, W), channels-last memory.
        Written into ``base`` where it is channels-last in ``x``'s dtype (a map of the upsampler's
        own, see :meth:`Upsampler.output_base`): on CPU a D-wide 64x64 map is not in cache by then,
        and a fresh one costs a pass of its own."""
        x, conv = self.x, self.conv
        bias = conv.bias.to(x.dtype) if conv.bias is not None else None
        if base is None:
            weight = conv.weight.flatten(1).to(x.dtype)  # (D, C)
            tokens = x.reshape(-1, x.shape[-1])
            out = torch.addmm(bias, tokens, weight.t()) if bias is not None else tokens @ weight.t()
            return out.view(*x.shape[:-1], -1).permute(0, 3, 1, 2)
        out = base.permute(0, 2, 3, 1)  # (B, H, W, D): the base is a fresh map (output_base), written in place
        if out.dtype != x.dtype or not out.is_contiguous():
            out = out.to(x.dtype).contiguous()
        if bias is not None:
            out.add_(bias)
        return accumulate_pointwise(out.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), conv.weight)


UpsamplerConfig = Union[None, str, os.PathLike, Mapping]


def check_output_size(size) -> Tuple[int, int]:
    """``size`` as (H_out, W_out), positive integers (an int is a square); a clear ValueError otherwise."""
    def whole(s) -> bool:
        return isinstance(s, numbers.Integral) and not isinstance(s, bool)

    out = (size, size) if whole(size) else tuple(size) if isinstance(size, (tuple, list, torch.Size)) else None
    if out is None or len(out) != 2 or not all(whole(s) and s >= 1 for s in out):
        raise ValueError(f"output_size must be (height, width) in positive integers, got {size!r}")
    return int(out[0]), int(out[1])


def build_upsampler(cfg: UpsamplerConfig, spec: BackboneSpec) -> "Upsampler":
    """An untrained upsampler from its config, for a backbone described by ``spec``:

    - ``None``: the ``none`` upsampler (the backbone's own stride-16 last layer, factor 1);
    - ``dict(type='brixel', **kwargs)``: built by registry name.

    A weight file (a path, or ``dict(weights=FILE, ...)``) is refused here: files are found,
    checked against the config and loaded by
    :func:`brixel_plugins.files.upsampler_file.upsampler_from_config`, which takes every form
    (and is what ``DenseFeaturizer.build`` and the adapters' ``upsampler=`` use).
    """
    if cfg is None:
        cfg = {"type": "none"}
    elif isinstance(cfg, (str, os.PathLike)) or (isinstance(cfg, Mapping) and cfg.get("weights") is not None):
        raise ValueError(f"build_upsampler builds an untrained upsampler from dict(type=...); {cfg!r} names a weight "
                         f"file: load it with brixel_plugins.files.upsampler_file.upsampler_from_config(cfg, spec) "
                         f"(or DenseFeaturizer.build), which finds the file, checks it against the config and loads it")
    elif not isinstance(cfg, Mapping):
        raise TypeError(f"an upsampler config is None, a weight file or a dict(type=...), got {cfg!r}")
    cfg = dict(copy.deepcopy(cfg))
    cfg.pop("weights", None)  # weights=None: no file, as a config may spell it
    name = cfg.pop("type", None)
    if name not in UPSAMPLERS:
        raise KeyError(f"unknown upsampler type {name!r}; registered: {list(list_upsamplers())}")
    return UPSAMPLERS[name](spec, **cfg)


class Upsampler(nn.Module, Calibration):
    """Base class. Subclasses call ``super().__init__(spec, factor, **config)`` where
    ``config`` holds every constructor argument needed to rebuild the module (it is saved in
    weight files). Learned methods implement :meth:`detail_map` (and :meth:`residual` if their
    output adds to a base of their own) and keep the :meth:`forward` template, which is where the
    zero start lives; fixed baselines (no parameters, no zero start) override :meth:`forward`.
    Data-fitted statistics follow the one calibration protocol (:class:`~.layers.calibration.Calibration`:
    nothing to fit unless a method mixes in another, FeatSharp's PHI-S)."""

    method: ClassVar[str] = ""
    # the one factor a method is built for (BRIXEL: 4), None where any factor the class accepts works
    fixed_factor: ClassVar[Optional[int]] = None
    needs_image: ClassVar[bool] = False
    uses_image_hr: ClassVar[bool] = False
    calls_backbone: ClassVar[bool] = False
    # whether forward honours any output_size, not only factor x the token grid
    any_output_size: ClassVar[bool] = False
    # set by files.upsampler_file.load_upsampler: the file the weights came from, and its training record
    weight_file: Optional[str] = None
    file_metadata: Mapping = {}

    def __init__(self, spec: BackboneSpec, factor: int, layer_indices: Tuple[int, ...] = (), **config):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"{type(self).__name__}: factor must be a positive integer, got {factor!r}")
        if self.fixed_factor is not None and factor != self.fixed_factor:
            raise ValueError(f"{type(self).__name__} upsamples by exactly {self.fixed_factor} (fixed by the method), "
                             f"got factor={factor!r}")
        self.spec = spec
        self.factor = int(factor)
        self.layer_indices = tuple(int(i) for i in layer_indices)
        bad = [i for i in self.layer_indices if not 0 <= i < spec.depth]
        if bad:
            raise ValueError(f"{type(self).__name__}: layers {bad} do not exist in a depth-{spec.depth} backbone")
        self.config = dict(factor=self.factor, **config)
        # a start that cannot be worse than interpolation (see forward)
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

    def output_size(self, image_hw: Tuple[int, int], requested: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
        """The output's (H_out, W_out) for a working image of ``image_hw``: ``factor`` x its token
        grid, or ``requested`` where the method gives any size (``any_output_size``) or
        ``requested`` is that grid anyway; any other request is refused with a ValueError."""
        h, w = image_hw
        p = self.spec.patch_size
        grid = (h // p * self.factor, w // p * self.factor)
        if requested is None:
            return grid
        size = check_output_size(requested)
        if size != grid and not self.any_output_size:
            raise ValueError(
                f"{self.method or type(self).__name__} upsamples by its factor only: for a {h}x{w} working image "
                f"its output is {grid[0]}x{grid[1]} (factor {self.factor} x the {h // p}x{w // p} token grid), got "
                f"output_size={requested!r}; methods that give any output size: "
                f"{[n for n, c in sorted(UPSAMPLERS.items()) if c.any_output_size]}")
        return size

    # -- the output: base + detail (the zero start lives here and nowhere else) ----------------
    def interpolation_base(self, source: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Bilinear enlargement of ``source`` (B, D, h, w) to ``size``, channels-last (on CPU ~30x
        faster than on an NCHW map of hundreds of channels; the same values)."""
        source = source.contiguous(memory_format=torch.channels_last)
        return F.interpolate(source, size=tuple(size), mode="bilinear", align_corners=False)

    def source_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor]) -> Optional[torch.Tensor]:
        """The map (B, D, h', w') the output's base enlarges: the deepest layer the method reads
        (the last of ``layer_indices``; None if it reads none). LiFT overrides it: the input of
        its last 2x application."""
        return layers[self.layer_indices[-1]] if self.layer_indices else None

    def residual(self, source: torch.Tensor, size: Tuple[int, int]) -> Optional[torch.Tensor]:
        """The method's own base without ``zero_start``, (B, D, *size) from ``source``: BRIXEL's
        released enlargement, BRIXEL-lean's bilinear one. None (the default): the method's
        output is its detail alone (LiFT, JBU, FeatSharp as released)."""
        return None

    def output_base(self, source: Optional[torch.Tensor], size: Tuple[int, int]) -> Optional[torch.Tensor]:
        """What the detail is added to, (B, D, *size) or None. With ``zero_start`` (the default of
        new trainings, off for the authors' weights) the bilinear enlargement of ``source``
        (:meth:`interpolation_base`): the method's detail starts at zero, so at step 0 the output
        IS bilinear interpolation and training adds detail from there; the start cannot be worse
        than interpolation. Otherwise the method's :meth:`residual`. Either way a map of its own,
        never a view of ``source``: :meth:`compose` may write the output into it."""
        base = self.interpolation_base(source, size) if self.zero_start else self.residual(source, size)
        return base.clone() if base is not None and base is source else base  # a resize that had nothing to do

    @staticmethod
    def compose(base: Optional[torch.Tensor], detail: Union[torch.Tensor, LastProjection]) -> torch.Tensor:
        """``base + detail`` in ``detail``'s dtype (``detail`` alone without a base). A
        :class:`LastProjection` is applied onto the base (:meth:`LastProjection.onto`). A map is
        added in place: ``detail`` is the fresh output of a method's last op (a projection or a
        gate, which keep their inputs, not their output, for backward), and the output map is the
        largest tensor of a forward (BRIXEL-lean at 512 px: 25 MB), so this saves an allocation and
        a pass."""
        if isinstance(detail, LastProjection):
            return detail.onto(base)
        return detail if base is None else detail.add_(base)

    def target_transform(self, feats: torch.Tensor) -> torch.Tensor:
        """The teacher's features (N, D, h, w) mapped into the space this upsampler's output is
        trained to match; identity by default. Distillation objectives apply it to every teacher
        map they use as a target (``DistillModel.target``). A method that learns a correction of
        the teacher overrides it, e.g. FeatSharp's de-bias buffer: its target is the backbone's
        features plus the learned buffer (resized to the grid of ``feats``), so the upsampler is
        trained against the same de-biased space its own low-res and tile inputs live in.
        Must be differentiable in its own parameters (they train through it) and keep the shape."""
        return feats

    def at_factor(self, factor: int, source: str = "this upsampler") -> "Upsampler":
        """This trained upsampler at another ``factor``, where the method can derive one from its
        weights: a method that gives any output size (``any_output_size``, no ``fixed_factor``) has
        no weight that depends on the factor, which only sets its default output grid, so the same
        weights serve; a JBU stack keeps its first layers. Otherwise refused with :class:`WeightFileError`."""
        if self.any_output_size and self.fixed_factor is None and int(factor) == factor and factor >= 1:
            config = {k: v for k, v in self.config.items() if k != "factor"}
            out = type(self)(self.spec, factor=int(factor), **config)
            out.load_state_dict(self.state_dict(), strict=True)
            out.weight_file = self.weight_file
            out.file_metadata = {**self.file_metadata, "trained_at_factor": self.factor}
            device = next((t.device for t in self.state_dict().values()), torch.device("cpu"))
            return out.to(device).train(self.training)
        raise WeightFileError(f"{source}: factor={factor} in the config, {self.factor} in the file; a "
                              f"{self.method} upsampler works at the factor it was trained at: drop 'factor' "
                              f"from the config or use a file trained at factor {factor}")

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
                backbone: Optional[nn.Module] = None, image_hr: Optional[torch.Tensor] = None,
                output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The template of every learned upsampler: ``output_base(source) + detail_map(...)``, the
        base computed once, here, and handed to the method (JBU and FeatSharp gate their difference
        to it). ``output_size``: see the module docstring (checked by :meth:`output_size`)."""
        source = self.source_map(image, layers)
        size = self.output_size(tuple(image.shape[-2:]), output_size)
        base = self.output_base(source, size)
        # only methods that give any size are told it; the others' size is factor x the grid
        sized = {"output_size": size} if self.any_output_size else {}
        return self.compose(base, self.detail_map(image, layers, source, base, backbone=backbone, image_hr=image_hr,
                                                  **sized))

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: Optional[torch.Tensor],
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:  # pragma: no cover - abstract
        """What the method adds to ``base`` (B, D, f*h, f*w), or a :class:`LastProjection` of it,
        given the arguments of :meth:`forward`,
        the :meth:`source_map` ``source`` and the :meth:`output_base` ``base`` (None: the method's
        plain output). With ``zero_start`` it must be zero at initialisation."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method}, factor={self.factor}, layers={list(self.layer_indices)}"


class CoreUpsampler(Upsampler):
    """A method whose whole computation is one module on the last layer,
    ``core(pixels (B,3,H',W'), source (B,C,h,w), (H_out, W_out)) -> (B,C,H_out,W_out)`` in the
    source's dtype (JAFAR, LoftUp): its pixels come from ``image_hr`` when one is given, its output
    has any requested size (else ``factor`` x the token grid), and ``zero_start`` opens a
    :class:`DetailGate` (``detail``) from bilinear interpolation."""

    needs_image = True
    uses_image_hr = True
    any_output_size = True

    def __init__(self, spec: BackboneSpec, factor: int, core: nn.Module, **config):
        super().__init__(spec, factor, (spec.depth - 1,), **config)
        self.core = core
        if self.zero_start:
            self.detail = DetailGate(spec.embed_dim)

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: torch.Tensor,
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None, output_size: Optional[Tuple[int, int]] = None
                   ) -> torch.Tensor:
        size = output_size or self.output_size(tuple(image.shape[-2:]))
        out = self.core(self.pixels(image, image_hr), source, size)
        return out if base is None else self.detail(out - base.to(out.dtype))
