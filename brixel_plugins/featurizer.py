"""DenseFeaturizer: frozen DINOv3 + an upsampler, image in, dense map out."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Sequence, Union

import torch
from torch import nn

from .backbones.dinov3 import FrozenDINOv3, check_image_size
from .upsamplers import Upsampler, build_upsampler


def backbone_layers(backbone: FrozenDINOv3, image: torch.Tensor,
                    upsamplers: Sequence[Upsampler]) -> Dict[int, torch.Tensor]:
    """One backbone pass for the union of the layers ``upsamplers`` read ({} if none read any)."""
    wanted = sorted({i for u in upsamplers for i in u.layer_indices})
    return backbone.layers(image, wanted) if wanted else {}


class DenseFeaturizer(nn.Module):
    """``image (B,3,H,W) -> (B, D, H*f/16, W*f/16)``, H and W multiples of 16, ImageNet-normalised.

    The backbone runs once per image for all layers the upsampler reads; upsamplers that run
    the backbone themselves (FeatSharp tiles, ``highres``) receive it. Only the upsampler's
    parameters train.
    """

    def __init__(self, backbone: FrozenDINOv3, upsampler: Upsampler):
        super().__init__()
        if upsampler.spec != backbone.spec:
            raise ValueError(f"upsampler built for {upsampler.spec}, backbone is {backbone.spec}")
        self.backbone = backbone
        self.upsampler = upsampler

    @classmethod
    def build(cls, backbone: Union[FrozenDINOv3, Mapping], upsampler: Union[Mapping, str, Path]) -> "DenseFeaturizer":
        """From a backbone (or its kwargs, e.g. ``dict(arch='vits16', weights=...)``) and an
        upsampler config dict (``dict(type='brixel')``) or an upsampler weight file."""
        from .io import load_upsampler

        if not isinstance(backbone, FrozenDINOv3):
            backbone = FrozenDINOv3(**backbone)
        if isinstance(upsampler, (str, Path)):
            up = load_upsampler(upsampler, backbone.spec)
        else:
            up = build_upsampler(upsampler, backbone.spec)
        return cls(backbone, up)

    @property
    def factor(self) -> int:
        return self.upsampler.factor

    @property
    def out_channels(self) -> int:
        return self.backbone.embed_dim

    @property
    def output_stride(self) -> float:
        return self.upsampler.output_stride

    def trainable_parameters(self):
        return (p for p in self.upsampler.parameters() if p.requires_grad)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image_size(image)
        layers = backbone_layers(self.backbone, image, [self.upsampler])
        return self.upsampler(image, layers, self.backbone)
