"""Which backbone output a distillation compares (``facet(distiller, image) -> (B, D, h, w)``)."""
from __future__ import annotations

import torch

from ..registry import TRANSFORMS

__all__ = ["LastLayerTokens", "LastBlockKeys"]


@TRANSFORMS.register_module()
class LastLayerTokens:
    """The last layer's normalised patch tokens: what every consumer of the upsamplers feeds them."""

    def __call__(self, distiller, image: torch.Tensor) -> torch.Tensor:
        return distiller.last_layer_map(image)

    def __repr__(self) -> str:
        return "LastLayerTokens()"


@TRANSFORMS.register_module()
class LastBlockKeys:
    """The last block's attention keys (heads concatenated, no final norm): LiFT's release target
    and input. An upsampler trained on keys expects keys, not the tokens our pipelines give it."""

    @torch.no_grad()
    def __call__(self, distiller, image: torch.Tensor) -> torch.Tensor:
        return distiller.backbone.last_block_keys(image)

    def __repr__(self) -> str:
        return "LastBlockKeys()"
