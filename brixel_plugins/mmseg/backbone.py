"""The MMSegmentation backbone: frozen DINOv3 + any upsampler, as one registered component.

The upsampler lives in the backbone, not in a neck: FeatSharp runs DINOv3 on image tiles and JBU
and BRIXEL read the image, while a neck only sees the backbone's output.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ..backbones.dinov3 import FrozenDINOv3
from ..featurizer import DenseFeaturizer
from ..files.checkpoints import RecordsTraining
from ..upsamplers import Upsampler, UpsamplerConfig


@MODELS.register_module()
class DINOv3Featurizer(RecordsTraining, BaseModule):
    """Frozen DINOv3 + upsampler for MMSegmentation heads and necks.

    Args:
        arch: Meta's DINOv3 name (``vits16``, ``vitb16``, ``vitl16``, ``vith16plus``, ...).
        weights: DINOv3 weight file (Meta's official ``.pth`` or timm layout); None = random init,
            drawn from ``init_seed``.
        init_seed: the seed of a random-init DINOv3 (``weights=None``; ignored with a file): the same
            seed draws the same backbone in every process, and checkpoints record it (see
            :class:`~brixel_plugins.backbones.FrozenDINOv3`).
        upsampler: None (the stride-16 last layer), ``dict(type='bilinear', factor=4)``,
            ``dict(type='brixel', weights='.../best_upsampler.safetensors')``, ... (an export of
            tools/distill.py or tools/convert_weights.py, refused with a clear message when it was
            made for another method or backbone; any other key given must agree with the file);
            see :func:`~brixel_plugins.files.upsampler_file.upsampler_from_config`.
        train_upsampler: fine-tune the upsampler with the head; by default it stays frozen
            (parameters without gradients, eval mode) like the backbone.
        out_indices: extra stride-16 backbone layers to return after the dense map (negative
            indices count from the end), e.g. for a pyramid neck.
        working_size / working_scale: run DINOv3 at this size (int or (h, w)) or at the image size
            times this scale, whatever size the images have; the upsampler reads the full image.
        output_size / output_scale: the dense map at this size ((h, w) or an int), or at this
            (non-integer allowed) multiple of the token grid, instead of ``factor`` x the grid; only
            upsamplers with ``any_output_size`` (bilinear, bicubic, AnyUp, ...) give other sizes,
            the rest are refused when the model is built (a scale) or at the first image (a size).
        autocast: ``'bf16'`` runs DINOv3 under bf16 autocast on CUDA.
        **overrides: timm constructor overrides (``depth``, ``embed_dim``, ``num_heads``) for tests.

    Output: a tuple ``(dense (B, D, f*h, f*w), *[(B, D, h, w) for out_indices])`` for a working
    image of ``16h x 16w`` (the dense map at ``output_size`` / ``output_scale`` x (h, w) when
    given); the dense map comes first so ``resize_concat`` heads keep its size.

    Checkpoints hold only what trains: the frozen DINOv3 (and a frozen upsampler loaded from a
    file) are left out of ``state_dict()`` and rebuilt from their files (or DINOv3's init seed) when
    the model is built, so a ViT-L run does not write 1.2 GB of copies per checkpoint. Weight files
    are found by the lookup rule of :mod:`brixel_plugins.files.lookup`, and every checkpoint records
    what it was trained with; a state dict that is not this model's is refused at load, whichever
    loader loads it (:class:`~brixel_plugins.files.checkpoints.RecordsTraining`).
    """

    def __init__(self, arch: str = "vits16", weights: Optional[str] = None, init_seed: int = 0,
                 upsampler: UpsamplerConfig = None,
                 train_upsampler: bool = False, out_indices: Sequence[int] = (),
                 working_size: Optional[Union[int, Sequence[int]]] = None, working_scale: Optional[float] = None,
                 output_size: Optional[Union[int, Sequence[int]]] = None, output_scale: Optional[float] = None,
                 autocast: Optional[str] = None, init_cfg=None, **overrides):
        if init_cfg is not None:
            raise ValueError("DINOv3Featurizer takes no init_cfg: DINOv3 loads `weights`, the upsampler its "
                             "own file; an initialiser would overwrite both")
        super().__init__()
        self.featurizer = DenseFeaturizer.build(
            dict(arch=arch, weights=weights, init_seed=init_seed, autocast=autocast, **overrides), upsampler,
            train_upsampler=train_upsampler, weights_key=f"{self.config_key}.weights",
            upsampler_key=f"{self.config_key}.upsampler", working_size=working_size, working_scale=working_scale,
            output_size=output_size, output_scale=output_scale)
        backbone, up = self.featurizer.backbone, self.featurizer.upsampler
        self.train_upsampler = bool(train_upsampler)
        if self.train_upsampler and not any(True for _ in up.parameters()):
            raise ValueError(f"train_upsampler=True, but the {up.method} upsampler has no parameters")
        if not up.calibrated:
            warnings.warn(f"the {up.method} upsampler has no fitted statistics; load an exported file "
                          f"(upsampler=dict(type='{up.method}', weights=...))", UserWarning, stacklevel=2)
        self.out_indices = tuple(backbone.resolve_indices([i])[0] for i in out_indices)
        self.leave_frozen_parts_out()

    @property
    def backbone(self) -> FrozenDINOv3:
        return self.featurizer.backbone

    @property
    def upsampler(self) -> Upsampler:
        return self.featurizer.upsampler

    @property
    def out_channels(self) -> Tuple[int, ...]:
        return (self.featurizer.out_channels,) * (1 + len(self.out_indices))

    def init_weights(self) -> None:
        """Nothing to initialise: mmengine's default would recurse into timm's Eva, whose own
        ``init_weights`` re-draws every DINOv3 weight. Both parts come from their files."""

    def train(self, mode: bool = True) -> "DINOv3Featurizer":
        super().train(mode)
        self.backbone.train(False)
        self.upsampler.train(mode and self.train_upsampler)  # a frozen upsampler's BN stays put
        return self

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        dense, layers = self.featurizer.features(image, self.out_indices)
        return (dense,) + tuple(layers[i] for i in self.out_indices)

