"""ViTDet feature pyramids over :class:`~brixel_plugins.d2.backbone.DINOv3Backbone`: p2..p6 at strides 4..64.

Where the upsampler goes in ViTDet, and at which stride: after the frozen ViT, before the
pyramid. The pyramid keeps ViTDet's operations (transposed 2x2 convolutions to go up, max-pooling
to go down, then a 1x1 and a 3x3 convolution with LayerNorm per level, and a max-pool top block
for p6) and only changes which map each level starts from, so the stock anchor generator, ROI
poolers and heads of ``mask_rcnn_vitdet`` / cascade work unchanged.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from torch import nn


class ViTDetFeaturePyramid(SimpleFeaturePyramid):
    """Detectron2's ``SimpleFeaturePyramid`` (plain ViTDet: the baseline without an upsampler),
    with its padding contract stated correctly.

    Upstream's ``padding_constraints`` spells its key ``size_divisiblity``, so
    ``ImageList.from_tensors`` never sees the divisibility, and ``size_divisibility`` stays the
    base class's 0: images that are not square-padded reach the ViT with sizes its patches do
    not tile. Here both say the true divisibility (the coarsest pyramid stride, and at least the
    net's own).
    """

    @property
    def size_divisibility(self) -> int:
        return max(self._size_divisibility, self.net.size_divisibility)

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": self._square_pad}


def resample(dim: int, log2_scale: int, norm: str) -> Tuple[nn.Module, int]:
    """ViTDet's resampling by ``2 ** log2_scale`` and the channels it leaves: each 2x up is a
    2x2 transposed conv halving the channels (LayerNorm + GELU between two of them), each 2x down
    a 2x2 max-pool (one pool of the whole size), identity at scale 1."""
    if log2_scale <= 0:
        k = 2 ** -log2_scale
        return (nn.MaxPool2d(kernel_size=k, stride=k) if k > 1 else nn.Identity()), dim
    layers: List[nn.Module] = []
    for i in range(log2_scale):
        if i:
            layers += [get_norm(norm, dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
        dim //= 2
    return nn.Sequential(*layers), dim


class UpsampledFeaturePyramid(Backbone):
    """ViTDet's simple feature pyramid for a net with an upsampled map: p2..p5 (+ top block p6).

    The net gives ``"dense"`` (the upsampler's map: stride 4, 8 or 16 from its factor, or the
    net's ``output_stride``, e.g. 4 from any token grid for upsamplers of any output size) and ``"last_feat"`` (the
    frozen ViT's own stride-16 map). Levels finer than the ViT's stride (p2, p3 at strides 4, 8)
    start from the dense map: that is where it holds what the stride-16 tokens cannot (small and
    thin objects, sharp boundaries). Levels at or above the ViT's stride (p4, p5, and p6 from p5)
    start from ``"last_feat"``, exactly as in ViTDet: the tokens there are the backbone's own, not
    a reconstruction, and the coarse levels of every variant (and of the plain-ViTDet baseline)
    stay the same, so any difference between upsamplers comes from the fine levels. Each level
    reaches its stride from its source with ViTDet's operations (see :func:`resample`): e.g. dense
    stride 4 -> p2 identity, p3 max-pool; dense stride 8 -> p2 one transposed conv, p3 identity;
    dense stride 16 (factor 1) -> exactly ViTDet's p2 and p3.

    Without ``"dense"`` in the net's outputs every level reads ``"last_feat"`` (ViTDet itself).

    Args:
        net: a Backbone with ``"last_feat"`` and optionally ``"dense"`` outputs, strides powers of two.
        out_channels: channels of every level (256 in ViTDet).
        strides: strides of the levels built here (p2..p5 = 4, 8, 16, 32).
        top_block: e.g. ``LastLevelMaxPool()`` for p6 from p5.
        norm: normalisation of the 1x1/3x3 convs ("LN" in ViTDet).
        square_pad: if > 0, images are padded to this square size (ViTDet: 1024).
    """

    def __init__(self, net: Backbone, out_channels: int = 256, strides: Sequence[int] = (4, 8, 16, 32),
                 top_block: Optional[nn.Module] = None, norm: str = "LN", square_pad: int = 0):
        super().__init__()
        shapes = net.output_shape()
        if "last_feat" not in shapes:
            raise KeyError(f"{type(net).__name__} gives {sorted(shapes)}; the pyramid needs 'last_feat' (and 'dense')")
        for name, s in shapes.items():
            if s.stride != 2 ** round(math.log2(s.stride)):
                raise ValueError(f"net output {name!r} has stride {s.stride}; the pyramid needs powers of two")
        strides = [int(s) for s in strides]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])) or strides[0] != 2 ** round(math.log2(strides[0])):
            raise ValueError(f"pyramid strides must be powers of two, each twice the last; got {strides}")
        self.net = net
        coarse = shapes["last_feat"].stride
        self.sources: Dict[str, str] = {}
        use_bias = norm == ""
        for stride in strides:
            source = "dense" if "dense" in shapes and stride < coarse else "last_feat"
            log2_scale = round(math.log2(shapes[source].stride)) - round(math.log2(stride))
            up, dim = resample(shapes[source].channels, log2_scale, norm)
            level = nn.Sequential(
                up,
                Conv2d(dim, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels)),
                Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=use_bias,
                       norm=get_norm(norm, out_channels)),
            )
            name = f"p{int(math.log2(stride))}"
            self.add_module(f"simfp_{int(math.log2(stride))}", level)
            self.sources[name] = source
        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for k in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{k}"] = 2 ** k
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        # Every level built here is exact (H / stride) when H is a multiple of its stride and of
        # its source's; the top block rounds up.
        self._size_divisibility = max([net.size_divisibility, *strides,
                                       *(shapes[src].stride for src in self.sources.values())])
        self._square_pad = int(square_pad)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``x (B, 3, H, W)`` -> ``{"p2": (B, C, H/4, W/4), ..., "p6": (B, C, ceil(H/64), ...)}``."""
        feats = self.net(x)
        out = {name: getattr(self, f"simfp_{name[1:]}")(feats[src]) for name, src in self.sources.items()}
        if self.top_block is not None:
            top_in = self.top_block.in_feature
            out.update(zip(self._out_features[len(self.sources):],
                           self.top_block(feats[top_in] if top_in in feats else out[top_in])))
        return out
