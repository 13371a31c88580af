"""Which backbone layers an upsampler taps: the default choice and the check of what a forward gets."""
from __future__ import annotations

from typing import Dict, List, Mapping, Tuple

import torch

from ...backbones.dinov3 import ARCHS, BackboneSpec

__all__ = ["RELEASE_TAPS", "check_taps", "default_taps"]

# Tapped layers of BRIXEL's released models (0-based block indices).
RELEASE_TAPS: Dict[str, Tuple[int, ...]] = {
    "vits16": (3, 6, 9, 11),
    "vits16plus": (3, 6, 9, 11),
    "vitb16": (3, 6, 9, 11),
    "vitl16": (6, 12, 18, 23),
    "vith16plus": (8, 16, 24, 31),
}


def default_taps(spec: BackboneSpec) -> Tuple[int, ...]:
    """The 4 tapped layers for a backbone.

    Released arches at their standard depth use the release's taps. Anything else (ViT-7B, a
    tiny test model) gets 4 evenly spaced layers ending at the last one, ``round(k*depth/4) - 1``
    for k = 1..4 (7B: 9, 19, 29, 39, the DINOv3 adapter's own choice; depth 4: 0, 1, 2, 3).
    A backbone shallower than 4 taps some layers twice.
    """
    std = ARCHS.get(spec.arch)
    if spec.arch in RELEASE_TAPS and std is not None and std.depth == spec.depth:
        return RELEASE_TAPS[spec.arch]
    return tuple(max(0, int(round(k * spec.depth / 4)) - 1) for k in range(1, 5))


def check_taps(up, image: torch.Tensor, layers: Mapping[int, torch.Tensor]) -> List[torch.Tensor]:
    """The tapped layers of the upsampler ``up`` (its ``layer_indices``, in order) from ``layers``,
    after checking they are all there and that ``image`` (B,3,H,W) is the picture of their token grid."""
    missing = [i for i in up.layer_indices if i not in layers]
    if missing:
        raise KeyError(f"{up.method} needs backbone layers {list(up.layer_indices)}; missing {missing}")
    taps = [layers[i] for i in up.layer_indices]
    h, w = taps[-1].shape[-2:]
    p = up.spec.patch_size
    if image.shape[-2:] != (h * p, w * p):
        raise ValueError(f"image {tuple(image.shape[-2:])} does not match the {h}x{w} token grid "
                         f"(expected {(h * p, w * p)})")
    return taps
