"""Frozen DINOv3 (+ an upsampler) as a Detectron2 ``Backbone``: the ``net`` under a ViTDet pyramid."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from detectron2.modeling import Backbone

from ..backbones.dinov3 import PATCH_SIZE, FrozenDINOv3
from ..featurizer import DenseFeaturizer
from ..files.checkpoints import RecordsTraining
from ..upsamplers import Upsampler, UpsamplerConfig
from ..upsamplers.base import any_size_upsamplers

PathLike = Union[str, Path]


class DINOv3Backbone(RecordsTraining, Backbone):
    """A frozen DINOv3 ViT/16 and an upsampler of its features (``none``: its own last layer).

    Input: ``(B, 3, H, W)`` ImageNet-normalised RGB (``GeneralizedRCNN`` with ViTDet's
    ``pixel_mean``/``pixel_std`` in 0-255 and ``input_format="RGB"`` produces it), H and W
    multiples of :attr:`size_divisibility`.

    Outputs, for ``s = 16 / working_scale`` (the backbone runs on the image resized by
    ``working_scale``; 1 by default) and the upsampler's factor ``f``:

    - ``"last_feat"``: ``(B, D, H/s, W/s)``, the last layer's normalised tokens (what ViTDet's
      pyramid reads);
    - ``"dense"``: ``(B, D, f*H/s, f*W/s)``, the upsampled map, from the same backbone pass
      (without an upsampler, f = 1: the last layer again); with ``output_stride=t``,
      ``(B, D, H/t, W/t)`` whatever the token grid.

    The DINOv3 never trains: no gradients, eval mode whatever ``.train()`` says. The upsampler is
    frozen the same way unless ``train_upsampler=True``. Frozen parts restored from their files or
    DINOv3's init seed (:meth:`restorable_parts`) are left out of ``state_dict()`` and so of
    Detectron2 checkpoints (the rule of :class:`~brixel_plugins.files.checkpoints.RecordsTraining`,
    the same as MMSegmentation's). Weight files are found by
    the lookup rule of :mod:`brixel_plugins.files.lookup`; every checkpoint records what the
    backbone was built with, and a state dict that is not this backbone's is refused at load,
    whichever checkpointer loads it (:class:`~brixel_plugins.files.checkpoints.RecordsTraining`).

    Args:
        arch: Meta's DINOv3 name (``vits16``, ``vitb16``, ``vitl16``, ...).
        weights: DINOv3 weight file (Meta's or timm's layout); ``None`` = random init (warned),
            drawn from ``init_seed``.
        init_seed: the seed of a random-init DINOv3 (ignored with a weight file); recorded in
            checkpoints, which then need not hold the random tensors.
        upsampler: ``None`` for plain ViTDet features, ``dict(type='brixel', ...)`` (freshly
            initialised), or a weight file / ``dict(type=..., weights=FILE, factor=...)`` (the file
            exported by tools/distill.py or converted by tools/convert_weights.py; on a command
            line ``model.backbone.net.upsampler.weights=...``): as
            :func:`~brixel_plugins.files.upsampler_file.upsampler_from_config` takes it (a ``factor``
            other than the file's derives a smaller JBU from a larger stack, and is refused otherwise).
        train_upsampler: fine-tune the upsampler with the detector (default: frozen).
        working_scale: run the backbone at the input size times this (16 / scale must be a
            power of two), e.g. 0.25 runs ViT at 256 px for 1024 px images.
        output_stride: the dense map's stride on the (padded) input, e.g. 4 for ViTDet's p2,
            whatever the token grid: the upsampler is asked for that size. Upsamplers that give
            any output size (bilinear, AnyUp, ...) take any stride; the rest only the stride their
            factor gives (refused at build otherwise). None: the factor's stride.
        autocast: ``"bf16"`` runs DINOv3 under bfloat16 autocast on CUDA.
        overrides: timm constructor overrides (``depth``, ``embed_dim``, ``num_heads``) for tiny models.
        upsampler_weights: removed (one spelling of the upsampler's file): a value is refused with
            what to write instead, ``upsampler=dict(type=..., weights=FILE)``.
    """

    config_key = "model.backbone.net"

    def __init__(self, arch: str = "vits16", weights: Optional[PathLike] = None, init_seed: int = 0,
                 upsampler: UpsamplerConfig = None, upsampler_weights: Optional[PathLike] = None,
                 train_upsampler: bool = False, working_scale: float = 1.0, autocast: Optional[str] = None,
                 overrides: Optional[Mapping] = None, output_stride: Optional[int] = None):
        super().__init__()
        if upsampler_weights is not None:
            kind = upsampler.get("type", "...") if isinstance(upsampler, Mapping) else "..."
            raise ValueError(f"{self.config_key}.upsampler_weights is not a key any more: write the file into the "
                             f"upsampler's config, upsampler=dict(type={kind!r}, weights={str(upsampler_weights)!r}) "
                             f"(on a command line: {self.config_key}.upsampler.weights={upsampler_weights})")
        stride = PATCH_SIZE / float(working_scale)
        if not (stride >= 1 and stride == 2 ** round(math.log2(stride))):
            raise ValueError(f"working_scale={working_scale} gives a backbone stride of {stride} px; it must make "
                             f"16 / working_scale a power of two (e.g. 1, 0.5, 0.25)")
        self.featurizer = DenseFeaturizer.build(
            dict(arch=arch, weights=weights, init_seed=init_seed, autocast=autocast, **dict(overrides or {})),
            upsampler, train_upsampler=train_upsampler, weights_key=f"{self.config_key}.weights",
            upsampler_key=f"{self.config_key}.upsampler", working_scale=None if working_scale == 1 else working_scale)
        dinov3, up = self.featurizer.backbone, self.featurizer.upsampler
        self.working_scale = float(working_scale)
        self.train_upsampler = bool(train_upsampler)
        self._stride = int(stride)
        factor_stride = self._stride / up.factor
        if output_stride is not None:
            if isinstance(output_stride, bool) or int(output_stride) != output_stride or output_stride < 1:
                raise ValueError(f"output_stride must be a positive integer (e.g. 4), got {output_stride!r}")
            if not up.any_output_size and factor_stride != output_stride:
                raise ValueError(f"output_stride={output_stride}: {up.method} upsamples by its factor {up.factor} "
                                 f"only, which turns the backbone's stride {self._stride} into {factor_stride:g} px; "
                                 f"use an upsampler that gives any size ({', '.join(any_size_upsamplers())}) or the "
                                 f"factor that gives stride {output_stride}")
        elif factor_stride != int(factor_stride):
            raise ValueError(f"{up.method} upsamples by {up.factor}, which turns the backbone's stride "
                             f"{self._stride} into {factor_stride} px; Detectron2 needs integer strides")
        dense_stride = int(factor_stride if output_stride is None else output_stride)
        # asked of the upsampler only where the factor does not give it: factor-only methods never are
        self._dense_size_stride = dense_stride if dense_stride != factor_stride else None
        self._out_feature_strides = {"dense": dense_stride, "last_feat": self._stride}
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: dinov3.embed_dim for k in self._out_features}
        self.leave_frozen_parts_out()
        self.train(False)

    @property
    def frozen_dinov3(self) -> FrozenDINOv3:
        return self.featurizer.backbone

    @property
    def upsampler(self) -> Upsampler:
        return self.featurizer.upsampler

    @property
    def upsampler_weights(self) -> Optional[str]:
        """The file the upsampler was loaded from (None: built by name)."""
        return self.upsampler.weight_file

    @property
    def size_divisibility(self) -> int:
        # the working image (input x scale) must be whole patches, and the dense map exactly H / its stride
        return max(self._stride, self._out_feature_strides["dense"])

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility}

    def train(self, mode: bool = True) -> "DINOv3Backbone":
        super().train(mode)
        if not self.train_upsampler:
            self.upsampler.train(False)  # frozen BatchNorm statistics and no drop-path
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        div = self.size_divisibility
        if h % div or w % div:
            raise ValueError(f"{type(self).__name__}: input {h}x{w} is not a multiple of {div} "
                             f"(size_divisibility); pad it, as ImageList.from_tensors does for the detector")
        last = self.frozen_dinov3.depth - 1
        t = self._dense_size_stride
        dense, layers = self.featurizer.features(x, [last], output_size=None if t is None else (h // t, w // t))
        return {"dense": dense, "last_feat": layers[last]}
