"""Frozen DINOv3 (+ an upsampler) as a Detectron2 ``Backbone``: the ``net`` under a ViTDet pyramid."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from detectron2.modeling import Backbone

from ..backbones.dinov3 import PATCH_SIZE, FrozenDINOv3
from ..files.checkpoints import RecordsTraining
from ..featurizer import DenseFeaturizer
from ..upsamplers import Upsampler, UpsamplerConfig, build_upsampler
from ..files.lookup import find_upsampler_file, find_weight_file

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
      (without an upsampler, f = 1: the last layer again).

    The DINOv3 never trains: no gradients, eval mode whatever ``.train()`` says. The upsampler is
    frozen the same way unless ``train_upsampler=True``. Frozen parts restored from their files or
    DINOv3's init seed (:meth:`restorable_parts`) are left out of Detectron2 checkpoints by
    :class:`~brixel_plugins.d2.checkpoint.FrozenBackboneCheckpointer`. Weight files are found by
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
            initialised), or a weight file / ``dict(type=..., weights=FILE, factor=...)``: as
            :func:`~brixel_plugins.upsamplers.build_upsampler` takes it (a ``factor`` other than
            the file's derives a smaller JBU from a larger stack, and is refused otherwise).
        upsampler_weights: the same as ``upsampler['weights']`` (the file exported by
            tools/distill.py or converted by tools/convert_weights.py), as a key of its own so a
            command line can set it: ``model.backbone.net.upsampler_weights=...``.
        train_upsampler: fine-tune the upsampler with the detector (default: frozen).
        working_scale: run the backbone at the input size times this (16 / scale must be a
            power of two), e.g. 0.25 runs ViT at 256 px for 1024 px images.
        autocast: ``"bf16"`` runs DINOv3 under bfloat16 autocast on CUDA.
        overrides: timm constructor overrides (``depth``, ``embed_dim``, ``num_heads``) for tiny models.
    """

    config_key = "model.backbone.net"

    def __init__(self, arch: str = "vits16", weights: Optional[PathLike] = None, init_seed: int = 0,
                 upsampler: UpsamplerConfig = None, upsampler_weights: Optional[PathLike] = None,
                 train_upsampler: bool = False, working_scale: float = 1.0, autocast: Optional[str] = None,
                 overrides: Optional[Mapping] = None):
        super().__init__()
        stride = PATCH_SIZE / float(working_scale)
        if not (stride >= 1 and stride == 2 ** round(math.log2(stride))):
            raise ValueError(f"working_scale={working_scale} gives a backbone stride of {stride} px; it must make "
                             f"16 / working_scale a power of two (e.g. 1, 0.5, 0.25)")
        if upsampler_weights is not None:
            upsampler = {"weights": upsampler} if isinstance(upsampler, (str, Path)) else dict(upsampler or {})
            if upsampler.setdefault("weights", str(upsampler_weights)) != str(upsampler_weights):
                raise ValueError(f"upsampler_weights={upsampler_weights!r} and upsampler weights="
                                 f"{upsampler['weights']!r} disagree; set one of them")
        weights = None if weights is None else find_weight_file(weights, "model.backbone.net.weights")
        upsampler = find_upsampler_file(upsampler, "model.backbone.net.upsampler_weights")
        dinov3 = FrozenDINOv3(arch, weights, init_seed=init_seed, autocast=autocast, **dict(overrides or {}))
        up = build_upsampler(upsampler, dinov3.spec)
        self.working_scale = float(working_scale)
        self.train_upsampler = bool(train_upsampler)
        self._stride = int(stride)
        dense_stride = self._stride / up.factor
        if dense_stride != int(dense_stride):
            raise ValueError(f"{up.method} upsamples by {up.factor}, which turns the backbone's stride "
                             f"{self._stride} into {dense_stride} px; Detectron2 needs integer strides")
        if not self.train_upsampler:
            up.requires_grad_(False)
        self.featurizer = DenseFeaturizer(dinov3, up, working_scale=None if working_scale == 1 else working_scale)
        self._out_feature_strides = {"dense": int(dense_stride), "last_feat": self._stride}
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: dinov3.embed_dim for k in self._out_features}
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
        # the working image (input x scale) must be whole patches, so every map is exactly H / stride
        return self._stride

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
        if h % self._stride or w % self._stride:
            raise ValueError(f"{type(self).__name__}: input {h}x{w} is not a multiple of {self._stride} "
                             f"(size_divisibility); pad it, as ImageList.from_tensors does for the detector")
        last = self.frozen_dinov3.depth - 1
        dense, layers = self.featurizer.features(x, [last])
        return {"dense": dense, "last_feat": layers[last]}
