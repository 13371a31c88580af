"""Frozen DINOv3 (+ an upsampler) as a Detectron2 ``Backbone``: the ``net`` under a ViTDet pyramid."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from detectron2.modeling import Backbone

from ..backbones.dinov3 import PATCH_SIZE, FrozenDINOv3
from ..featurizer import DenseFeaturizer, working_hw
from ..images import resize
from ..io import load_upsampler
from ..upsamplers import Upsampler, build_upsampler

PathLike = Union[str, Path]


def build_frozen_upsampler(upsampler: Mapping, weights: Optional[PathLike], dinov3: FrozenDINOv3) -> Upsampler:
    """``dict(type=..., **kwargs)``, from ``weights`` (an export of tools/distill.py) when given.

    With a file, the file says how to build the upsampler; keyword arguments in ``upsampler``
    must agree with it (a config asking for factor 4 never silently gets a factor-2 file)."""
    cfg = dict(upsampler)
    if "type" not in cfg:
        raise KeyError(f"upsampler config needs a 'type' (one of the registered upsamplers), got {cfg}")
    if weights is None:
        return build_upsampler(cfg, dinov3.spec)
    up = load_upsampler(weights, dinov3.spec, method=cfg.pop("type"))
    clash = {k: (v, up.config.get(k)) for k, v in cfg.items() if up.config.get(k) != v}
    if clash:
        raise ValueError(f"{weights} holds a {up.method} upsampler built with "
                         + ", ".join(f"{k}={have!r}" for k, (_, have) in clash.items())
                         + ", but the config asks for " + ", ".join(f"{k}={want!r}" for k, (want, _) in clash.items())
                         + "; drop these keys from the config or use a matching file")
    return up


class DINOv3Backbone(Backbone):
    """A frozen DINOv3 ViT/16 and, optionally, an upsampler of its features.

    Input: ``(B, 3, H, W)`` ImageNet-normalised RGB (``GeneralizedRCNN`` with ViTDet's
    ``pixel_mean``/``pixel_std`` in 0-255 and ``input_format="RGB"`` produces it), H and W
    multiples of :attr:`size_divisibility`.

    Outputs, for ``s = 16 / working_scale`` (the backbone runs on the image resized by
    ``working_scale``; 1 by default) and the upsampler's factor ``f``:

    - ``"last_feat"``: ``(B, D, H/s, W/s)``, the last layer's normalised tokens (what ViTDet's
      pyramid reads);
    - ``"dense"`` (only with an upsampler): ``(B, D, f*H/s, f*W/s)``, the upsampled map, from the
      same backbone pass.

    The DINOv3 never trains: no gradients, eval mode whatever ``.train()`` says. The upsampler is
    frozen the same way unless ``train_upsampler=True``. Parts restored from their own files
    (listed by :meth:`external_weights`) are left out of Detectron2 checkpoints by
    :class:`~brixel_plugins.d2.checkpoint.FrozenBackboneCheckpointer`.

    Args:
        arch: Meta's DINOv3 name (``vits16``, ``vitb16``, ``vitl16``, ...).
        weights: DINOv3 weight file (Meta's or timm's layout); ``None`` = random init (warned).
        upsampler: ``dict(type='brixel', ...)`` or ``None`` for plain ViTDet features.
        upsampler_weights: the upsampler file exported by tools/distill.py (or converted from a
            release by tools/convert_weights.py); ``None`` = freshly initialised.
        train_upsampler: fine-tune the upsampler with the detector (default: frozen).
        working_scale: run the backbone at the input size times this (16 / scale must be a
            power of two), e.g. 0.25 runs ViT at 256 px for 1024 px images.
        autocast: ``"bf16"`` runs DINOv3 under bfloat16 autocast on CUDA.
        overrides: timm constructor overrides (``depth``, ``embed_dim``, ``num_heads``) for tiny models.
    """

    def __init__(self, arch: str = "vits16", weights: Optional[PathLike] = None,
                 upsampler: Optional[Mapping] = None, upsampler_weights: Optional[PathLike] = None,
                 train_upsampler: bool = False, working_scale: float = 1.0, autocast: Optional[str] = None,
                 overrides: Optional[Mapping] = None):
        super().__init__()
        stride = PATCH_SIZE / float(working_scale)
        if not (stride >= 1 and stride == 2 ** round(math.log2(stride))):
            raise ValueError(f"working_scale={working_scale} gives a backbone stride of {stride} px; it must make "
                             f"16 / working_scale a power of two (e.g. 1, 0.5, 0.25)")
        if upsampler is None and upsampler_weights is not None:
            raise ValueError(f"upsampler_weights={upsampler_weights!r} given without an upsampler; "
                             f"set upsampler=dict(type=...) too")
        dinov3 = FrozenDINOv3(arch, weights, autocast=autocast, **dict(overrides or {}))
        self.working_scale = float(working_scale)
        self.train_upsampler = bool(train_upsampler)
        self.upsampler_weights = None if upsampler_weights is None else str(upsampler_weights)
        self._stride = int(stride)
        if upsampler is None:
            self.dinov3, self.featurizer = dinov3, None
            self._out_feature_strides = {"last_feat": self._stride}
        else:
            up = build_frozen_upsampler(upsampler, upsampler_weights, dinov3)
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
        return self.dinov3 if self.featurizer is None else self.featurizer.backbone

    @property
    def upsampler(self) -> Optional[Upsampler]:
        return None if self.featurizer is None else self.featurizer.upsampler

    @property
    def size_divisibility(self) -> int:
        # the working image (input x scale) must be whole patches, so every map is exactly H / stride
        return self._stride

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility}

    def train(self, mode: bool = True) -> "DINOv3Backbone":
        super().train(mode)
        if self.upsampler is not None and not self.train_upsampler:
            self.upsampler.train(False)  # frozen BatchNorm statistics and no drop-path
        return self

    def external_weights(self) -> Dict[str, str]:
        """``{submodule name: file}`` of the frozen parts that load from their own files (and so
        need not be stored in detector checkpoints). Random-init frozen parts are not listed:
        nothing but the checkpoint could restore them."""
        out = {}
        dinov3 = self.frozen_dinov3
        if dinov3.weights is not None:
            out["dinov3" if self.featurizer is None else "featurizer.backbone"] = dinov3.weights
        if self.upsampler is not None and not self.train_upsampler and self.upsampler_weights is not None:
            out["featurizer.upsampler"] = self.upsampler_weights
        return out

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self._stride or w % self._stride:
            raise ValueError(f"{type(self).__name__}: input {h}x{w} is not a multiple of {self._stride} "
                             f"(size_divisibility); pad it, as ImageList.from_tensors does for the detector")
        if self.featurizer is None:
            work = resize(x, working_hw((h, w), scale=self.working_scale))
            return {"last_feat": self.dinov3.last_layer(work)}
        last = self.frozen_dinov3.depth - 1
        dense, layers = self.featurizer.features(x, [last])
        return {"dense": dense, "last_feat": layers[last]}
