"""LiFT (Suri et al., ECCV 2024): a small image-guided 2x upsampler of last-layer ViT features.

One 2x step, for patch size p (16 for DINOv3) and feature dim C (even)::

    image (B,3,H,W) --image_convs_1--> (B,32,H/4,W/4) --maxpool 2 (p=16; identity for p=8)--> imgs_1 (B,32,2h,2w)
    imgs_1 --image_convs_2--> imgs_2 (B,32,h,w)                        with h = H/p, w = W/p
    cat[features (B,C,h,w), imgs_2] (C+32) --up1.up: ConvTranspose k2 s2--> (B,(C+32)//2,2h,2w)
    cat[that, imgs_1] ((C+32)//2 + 32) --up1.conv_1: (3x3 no bias + BN + ReLU) x2--> (B,C/2,2h,2w)
    --outc: 1x1--> (B,C,2h,2w)

Factors 4 and 8 apply the same module recursively (as the paper does): step k (k = 0, 1, ..)
takes the previous output at grid ``2^k h x 2^k w`` and the image bicubically enlarged to
``2^k H x 2^k W``, so that its image branch lands exactly at the current grid (imgs_2) and
twice it (imgs_1). Step 0 uses the image as given. No extra parameters for larger factors.

The module layout and state-dict keys are those of the authors' release, so their flat
``.pth`` files load after :func:`convert_release` (or :meth:`LiFT.load_release_state_dict`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from .base import Upsampler, register_upsampler, zero_init
from .layers.layout import channels_last, pointwise, run_folded

IMAGE_WIDTH = 32  # channels of the image branch (fixed in the release)


def _conv_bn_relu(cin: int, cout: int, stride: int, bias: bool) -> list:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _DoubleConv(nn.Module):
    """(3x3 conv no bias -> BN -> ReLU) x 2: (B,cin,h,w) -> (B,cout,h,w). Keys ``double_conv.{0,1,3,4}``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(*_conv_bn_relu(cin, cout, 1, False), *_conv_bn_relu(cout, cout, 1, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_folded(self.double_conv, x)


class _Up(nn.Module):
    """ConvTranspose 2x of the fused map, then concat the 2x image features and a double conv.

    (B,cin,h,w), (B,32,2h,2w) -> (B,cout,2h,2w) with cin = C+32, cout = C/2.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv_1 = _DoubleConv(cin // 2 + IMAGE_WIDTH, cout)

    def forward(self, x: torch.Tensor, imgs_1: torch.Tensor) -> torch.Tensor:
        # Release order: upsampled features first, image features second (matters for weights).
        return self.conv_1(torch.cat([self.up(x), imgs_1], dim=1))


@register_upsampler("lift")
class LiFT(Upsampler):
    """LiFT on the last layer: ``image (B,3,H,W), {last: (B,C,H/16,W/16)} -> (B,C,f*H/16,f*W/16)``.

    Args:
        spec: the backbone it upsamples (C = ``spec.embed_dim``, must be even).
        factor: 2, 4 or 8 (2 ** number of recursive applications of the one 2x module).
        zero_start: each 2x step adds its output to the bilinear 2x enlargement of its input
            and ``outc`` starts at zero: the untrained module is bilinear interpolation (2x at a
            time). The last step is the :meth:`Upsampler.forward` template on the input of that
            step (:meth:`source_map`); the earlier ones compose the same base and detail.
            The authors' files need the default False.

    Parameters: 1,187,280 at C=384 (ViT-S), 4,417,296 at C=768 (ViT-B), independent of factor.
    """

    needs_image = True

    def __init__(self, spec: BackboneSpec, factor: int = 2, zero_start: bool = False):
        if factor not in (2, 4, 8):
            raise ValueError(f"LiFT: factor must be 2, 4 or 8 (the 2x module applied 1-3 times), got {factor!r}")
        super().__init__(spec, factor, (spec.depth - 1,), zero_start=bool(zero_start))
        c = spec.embed_dim
        if c % 2:
            raise ValueError(f"LiFT needs an even feature dim, got {c}")
        if spec.patch_size not in (8, 16):
            raise ValueError(f"LiFT supports patch size 8 or 16, got {spec.patch_size}")
        self.steps = factor.bit_length() - 1
        self.image_convs_1 = nn.Sequential(*_conv_bn_relu(3, IMAGE_WIDTH, 2, True),
                                           *_conv_bn_relu(IMAGE_WIDTH, IMAGE_WIDTH, 2, True))
        # Stride 4 so far; patch 16 needs one more halving to land at 2x the token grid.
        self.scale_adapter = nn.MaxPool2d(2, 2) if spec.patch_size == 16 else nn.Identity()
        self.image_convs_2 = nn.Sequential(*_conv_bn_relu(IMAGE_WIDTH, IMAGE_WIDTH, 2, True))
        self.up1 = _Up(c + IMAGE_WIDTH, c // 2)
        self.outc = nn.Conv2d(c // 2, c, kernel_size=1)
        if self.zero_start:
            zero_init(self.outc)

    def step(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The detail of one 2x application: feats (B,C,h,w), image (B,3,p*h,p*w) -> (B,C,2h,2w)."""
        # channels-last throughout (brixel_plugins.upsamplers.layers.layout): on CPU the max pooling is
        # vectorised there (docs/benchmark.md), and the convolutions skip oneDNN's reorders of NCHW maps
        imgs_1 = self.scale_adapter(run_folded(self.image_convs_1, channels_last(image)))
        imgs_2 = run_folded(self.image_convs_2, imgs_1)
        if imgs_2.shape[-2:] != feats.shape[-2:]:
            raise ValueError(f"LiFT: image {tuple(image.shape[-2:])} gives an image branch at "
                             f"{tuple(imgs_2.shape[-2:])}, features are {tuple(feats.shape[-2:])}; "
                             f"the image must be {self.spec.patch_size}x the feature grid")
        return pointwise(self.outc, self.up1(torch.cat([channels_last(feats), imgs_2], dim=1), imgs_1))

    @staticmethod
    def step_image(image: torch.Tensor, k: int) -> torch.Tensor:
        """The image step ``k`` reads: features at 2^k x the token grid need it at 2^k x its size."""
        h, w = image.shape[-2:]
        if k == 0:
            return image
        # channels-last like the convolutions that read it (on CPU faster than NCHW + a conversion)
        return F.interpolate(channels_last(image), size=(h << k, w << k), mode="bicubic", align_corners=False)

    def source_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """The input of the last 2x step: the last layer after the earlier steps, each of which is
        ``output_base + detail`` on its own input."""
        x = layers[self.last_layer]
        for k in range(self.steps - 1):
            size = (2 * x.shape[-2], 2 * x.shape[-1])
            x = self.compose(self.output_base(x, size), self.step(x, self.step_image(image, k)))
        return x

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: torch.Tensor,
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.step(source, self.step_image(image, self.steps - 1))

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """Released keys are ours; refuse a file made for another feature dim."""
        if "outc.weight" not in sd or "up1.up.weight" not in sd:
            raise WeightFileError(f"{source} is not a LiFT checkpoint: no outc/up1 keys among "
                                  f"{sorted(sd)[:6]}{'...' if len(sd) > 6 else ''}")
        c_file = sd["outc.weight"].shape[0]
        if c_file != self.embed_dim:
            raise WeightFileError(
                f"{source} is a LiFT for feature dim C={c_file}, but this backbone ({self.spec.arch}) has "
                f"C={self.embed_dim}; use the LiFT release made for a C={self.embed_dim} backbone")
        return sd
