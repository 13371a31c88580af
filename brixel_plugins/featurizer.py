"""DenseFeaturizer: frozen DINOv3 + an upsampler, image in, dense map out.

The image arrives at the resolution the user has; the backbone runs at a working resolution
(the same one by default). Shapes, for a working image of H x W (multiples of 16) and factor f::

    image (B,3,H',W') --resize--> working (B,3,H,W) --DINOv3--> {i: (B,D,H/16,W/16)}
    upsampler(working, layers, backbone, image_hr=image) -> (B, D, f*H/16, f*W/16)

or, with ``output_size`` / ``output_scale`` (upsamplers with ``any_output_size``: bilinear, bicubic,
AnyUp, JAFAR, LoftUp), (B, D, H_out, W_out). See :mod:`brixel_plugins.upsamplers.base` for which
upsampler reads which image.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .backbones.dinov3 import PATCH_SIZE, FrozenDINOv3, check_image_batch, check_image_size
from .files.lookup import find_weight_file
from .files.upsampler_file import upsampler_from_config
from .images import resize
from .upsamplers import Upsampler, UpsamplerConfig
from .upsamplers.base import any_size_upsamplers, check_output_size

Size = Union[int, Sequence[int]]


def working_hw(hw: Sequence[int], size: Optional[Size] = None, scale: Optional[float] = None,
               multiple: int = PATCH_SIZE) -> Tuple[int, int]:
    """The backbone's working size for an image of size ``hw`` = (H', W').

    - neither given: ``hw`` itself, which must then be a multiple of ``multiple`` on both sides;
    - ``size``: exactly (h, w), or a square for an int (multiples of ``multiple``);
    - ``scale``: each side times ``scale``, rounded to the nearest multiple (at least one patch).
    """
    if size is not None and scale is not None:
        raise ValueError("give working_size or working_scale, not both")
    if size is not None:
        out = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        if len(out) != 2 or any(s <= 0 or s % multiple for s in out):
            raise ValueError(f"working_size must be positive multiples of {multiple}, got {size!r}")
        return out
    if scale is not None:
        if not float(scale) > 0:
            raise ValueError(f"working_scale must be > 0, got {scale!r}")
        return tuple(max(multiple, int(round(s * float(scale) / multiple)) * multiple) for s in hw)
    h, w = (int(s) for s in hw)
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of {multiple} on both sides; resize or pad it, or set "
            f"working_size / working_scale so the backbone runs at e.g. "
            f"{max(multiple, round(h / multiple) * multiple)}x{max(multiple, round(w / multiple) * multiple)}")
    return h, w


def requested_output_size(grid_hw: Sequence[int], size: Optional[Size] = None,
                          scale: Optional[float] = None) -> Optional[Tuple[int, int]]:
    """The output size asked for over a token grid ``grid_hw`` = (h, w): ``size`` itself ((H_out, W_out),
    an int for a square), or ``scale`` x the grid (each side rounded, at least 1; any positive
    float), or None for the upsampler's own ``factor`` x the grid."""
    if size is not None and scale is not None:
        raise ValueError("give output_size or output_scale, not both")
    if size is not None:
        return check_output_size(size)
    if scale is not None:
        if not float(scale) > 0:
            raise ValueError(f"output_scale must be > 0, got {scale!r}")
        return tuple(max(1, int(round(s * float(scale)))) for s in grid_hw)
    return None


def backbone_layers(backbone: FrozenDINOv3, image: torch.Tensor, upsamplers: Sequence[Upsampler],
                    extra: Sequence[int] = ()) -> Dict[int, torch.Tensor]:
    """One backbone pass for the union of the layers ``upsamplers`` read and ``extra`` ({} if none)."""
    wanted = sorted({i for u in upsamplers for i in u.layer_indices} | set(backbone.resolve_indices(extra)
                                                                          if extra else ()))
    return backbone.layers(image, wanted) if wanted else {}


class DenseFeaturizer(nn.Module):
    """``image (B,3,H',W') -> (B, D, f*H/16, f*W/16)`` where H x W is the working size.

    Args:
        backbone: the frozen DINOv3.
        upsampler: any registered upsampler built for ``backbone.spec``.
        working_size: run the backbone at exactly this size ((h, w), or an int for a square).
        working_scale: or at the image's size times this (each side rounded to a multiple of 16).
            With neither, the image itself is the working image and must be a multiple of 16.
        output_size: the dense map's (H_out, W_out) (an int for a square), whatever the image size;
        output_scale: or this (non-integer allowed) times the token grid of the working image.
            With neither, ``factor`` x the token grid. Other sizes than that only from upsamplers
            that give any size (``upsampler.any_output_size``: bilinear, bicubic, AnyUp, JAFAR,
            LoftUp); the rest refuse them with a ValueError (a scale here, a size at the first image).

    The backbone runs once per image for all layers the upsampler reads (plus any asked for in
    :meth:`features`); upsamplers that run the backbone themselves (FeatSharp tiles, ``highres``)
    receive it, and all receive the user's image as ``image_hr``. Only the upsampler's
    parameters train.
    """

    def __init__(self, backbone: FrozenDINOv3, upsampler: Upsampler, working_size: Optional[Size] = None,
                 working_scale: Optional[float] = None, output_size: Optional[Size] = None,
                 output_scale: Optional[float] = None):
        super().__init__()
        if upsampler.spec != backbone.spec:
            raise ValueError(f"upsampler built for {upsampler.spec}, backbone is {backbone.spec}")
        working_hw((PATCH_SIZE, PATCH_SIZE), working_size, working_scale)  # validate now, not at the first batch
        requested_output_size((1, 1), output_size, output_scale)
        self._check_scale(upsampler, output_scale)
        self.backbone = backbone
        self.upsampler = upsampler
        self.working_size, self.working_scale = working_size, working_scale
        self.output_size, self.output_scale = output_size, output_scale

    @staticmethod
    def _check_scale(upsampler: Upsampler, scale: Optional[float]) -> None:
        """Refuse a scale a factor-only upsampler cannot give, before any image (sizes are checked
        per image by ``upsampler.output_size``)."""
        if scale is not None and not upsampler.any_output_size and float(scale) != upsampler.factor:
            raise ValueError(f"{upsampler.method} upsamples by its factor {upsampler.factor} only, got "
                             f"output_scale={scale!r}; use an upsampler that gives any size for other scales "
                             f"({', '.join(any_size_upsamplers())})")

    @classmethod
    def build(cls, backbone: Union[FrozenDINOv3, Mapping], upsampler: UpsamplerConfig = None, *,
              train_upsampler: bool = True, weights_key: str = "backbone.weights", upsampler_key: str = "upsampler",
              **sizes) -> "DenseFeaturizer":
        """The one assembly of a featurizer (the adapters, the benchmark and the distiller call it).

        Args:
            backbone: a :class:`FrozenDINOv3`, or its kwargs (``dict(arch='vits16', weights=...)``),
                whose weight file is found by the lookup rule of :mod:`brixel_plugins.files.lookup`.
            upsampler: any form :func:`~brixel_plugins.files.upsampler_file.upsampler_from_config`
                takes (``None``, ``dict(type='brixel')``, a weight file,
                ``dict(type='jbu', weights=..., factor=2)``).
            train_upsampler: False freezes the upsampler (no gradients), as the adapters do by default.
            weights_key / upsampler_key: where the DINOv3 file and the upsampler sit in the caller's
                config (``model.backbone.weights``), named in the messages about them.
            sizes: ``working_size`` / ``working_scale`` / ``output_size`` / ``output_scale``.
        """
        if not isinstance(backbone, FrozenDINOv3):
            backbone = dict(backbone)
            if backbone.get("weights") is not None:
                backbone["weights"] = find_weight_file(backbone["weights"], weights_key)
            backbone = FrozenDINOv3(**backbone)
        up = upsampler_from_config(upsampler, backbone.spec, upsampler_key)
        if not train_upsampler:
            up.requires_grad_(False)
        return cls(backbone, up, **sizes)

    @property
    def factor(self) -> int:
        return self.upsampler.factor

    @property
    def out_channels(self) -> int:
        return self.backbone.embed_dim

    @property
    def output_stride(self) -> float:
        """Stride of the dense map relative to the working image."""
        return self.upsampler.output_stride

    def working_hw(self, image_hw: Sequence[int]) -> Tuple[int, int]:
        return working_hw(image_hw, self.working_size, self.working_scale)

    def trainable_parameters(self):
        return (p for p in self.upsampler.parameters() if p.requires_grad)

    def features(self, image: torch.Tensor, layer_indices: Sequence[int] = (), output_size: Optional[Size] = None,
                 output_scale: Optional[float] = None) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
        """``(dense (B,D,f*h,f*w), {i: (B,D,h,w)})`` for the upsampler's layers plus ``layer_indices``
        (negative indices count from the end), from one backbone pass on the working image.
        ``output_size`` / ``output_scale``: for this call, instead of the constructor's (see there)."""
        if output_size is None and output_scale is None:
            output_size, output_scale = self.output_size, self.output_scale
        else:
            self._check_scale(self.upsampler, output_scale)
        check_image_batch(image)  # before resizing: a uint8 or empty batch gets a clear error
        work = resize(image, self.working_hw(image.shape[-2:]))
        check_image_size(work)
        size = requested_output_size([s // self.backbone.spec.patch_size for s in work.shape[-2:]], output_size,
                                     output_scale)
        if size is not None:  # refused before the backbone pass, not after
            self.upsampler.output_size(tuple(work.shape[-2:]), size)
        layers = backbone_layers(self.backbone, work, [self.upsampler], layer_indices)
        sized = {} if size is None else {"output_size": size}  # None: the upsampler's own factor x the grid
        dense = self.upsampler(work, layers, self.backbone, image_hr=image, **sized)
        return dense, layers

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image)[0]

    def compile(self, **kwargs) -> "DenseFeaturizer":
        """Compile the forward in place with ``torch.compile`` (``kwargs`` are its options; default
        inductor) and return the featurizer. The first call compiles: minutes on CPU, where
        inductor also needs a C++ compiler. The output is the same up to rounding; what it gains per
        upsampler, and the compile time, are measured in docs/benchmark.md."""
        super().compile(**kwargs)
        return self
