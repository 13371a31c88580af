"""BRIXEL-lean: BRIXEL's data flow at a fraction of its cost (4x upsampling).

``BrixelLean.forward(image (B,3,H,W), layers {i: (B,D,h,w)}) -> (B,D,4h,4w)``, ``h, w = H/16, W/16``.

Same idea as :mod:`brixel_plugins.upsamplers.brixel` (a conv stem reads the pixels; queries on a
2x grid read the 4 tapped backbone layers with deformable attention; a conv head at 4x adds the
detail to the enlarged last layer), re-proportioned where the measurements put the cost. For
ViT-S at 256 px the release's upsampler costs 6.6 GFLOPs (the backbone 11.2):

============================== ======= =====================================================
part (release, ViT-S, 256 px)  GFLOPs  lean
============================== ======= =====================================================
stem: 3 full-width convs, two  2.47    2 strided convs 3 -> width/2 -> width reach stride 4,
at 128x128                             one more conv there
6 extractors at width D (1024  3.00    2 extractors at width ``query_dim`` (D/3), each reading
queries, 16 heads x 4 points)          2 taps as the 2 levels of one deformable attention,
                                       8 heads x 4 points; each tap projected D -> query_dim
spm.fc1 + head.align_in:       0.40    c1 stays at head width: no D-wide map at 4x
D-wide maps at 64x64
head: 3 blocks, grouped mix,   0.49    1 ConvNeXt block (dw3x3, MLP x2), out_conv fused
out_conv, + base                       with the residual (one pass over the D-wide output)
============================== ======= =====================================================

Where the measurements sent the budget (demo protocol, 300 iterations, held-out fidelity; the
release 1.496): the head width buys fidelity (64 -> 96: 1.419 -> 1.511 with 4 extractors at
D/2), the number of query updates and head blocks buys little (4 extractors of one tap -> 2 of
two taps at D/3: -0.017 at width 64; 2 head blocks -> 1 at width 96: 1.479 -> 1.502), so the
lean variant spends on the 4x maps' width what it saves in the extractors and the head
(1.502 at less CPU time than the width-64 design's 1.419). On a CPU, time goes less with FLOPs than
with memory traffic at 4x: the maps there stay ``width`` channels wide until ``out_conv``,
everything runs channels-last (tokens and maps are views of each other), and ``out_conv``
writes straight into the enlarged base (``addmm_``).

Data flow (``w`` = ``width``, ``q`` = ``query_dim``):

1. stem: conv3x3 s2 3->w/2, conv3x3 s2 w/2->w, conv3x3 w->w (BN, ReLU) -> s1 at stride 4; conv3x3 s2
   w->2w -> s2 at stride 8; ``query_in`` 1x1 2w->q on s2 -> queries at 2x the token grid.
2. extractor k reads taps 2k, 2k+1: ``q <- extractor_k(q, [tap_proj(tap_2k), tap_proj(tap_2k+1)])``,
   an extractor as in BRIXEL (LayerNorm, deformable cross-attention over the taps as levels,
   ConvFFN with drop-path) at width q.
3. ``x = LN(s1 + bilinear_2x(query_out(q)))`` at 4x the grid, w channels -> ``head_blocks``
   ConvNeXt blocks -> LN -> 1x1 w->D -> + bilinear 4x of the last tapped layer (``out_conv``
   starts at zero with ``zero_start``: the untrained module is bilinear interpolation).

Parameters (defaults): ViT-S 0.70M, B 1.57M, L 2.38M, H+ 3.53M (``test_lean_parameter_counts``
counts them by hand).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import torch
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from .base import LastProjection, Upsampler, register_upsampler, zero_init
from .layers.adapter import Extractor, conv_bn_relu, init_weights
from .layers.deform_attn import MSDeformAttn, reference_points
from .layers.layout import resize_to, run_folded, to_map, to_tokens
from .layers.norm import LayerNorm2d
from .layers.taps import check_taps, default_taps


@register_upsampler("brixel_lean")
class BrixelLean(Upsampler):
    """BRIXEL-lean: ``forward(image (B,3,H,W), layers {i: (B,D,H/16,W/16)}) -> (B,D,H/4,W/4)``.

    Args:
        spec: the frozen backbone's spec.
        factor: must be 4.
        layer_indices: the 4 tapped layers; default BRIXEL's (:func:`~.layers.taps.default_taps`).
        query_dim: width of the queries (default D/3 rounded to a multiple of 2 * n_heads: 128
            for ViT-S, 256 for B, 336 for L, 432 for H+).
        width: stem and head width (default 96).
        n_heads, n_points: deformable attention heads and sampling points per head.
        head_blocks: ConvNeXt blocks (depthwise 3x3, LayerNorm, MLP) in the head.
        mlp_ratio: their MLP width over ``width``.
        drop_path: drop-path rate on the extractors' FFN branch (training only).
        taps_per_extractor: tapped layers each extractor reads, as the levels of one deformable
            attention (default 2: two extractors for four taps).
        zero_start: ``out_conv`` starts at zero, so the untrained output is bilinear interpolation.
    """

    fixed_factor = 4  # its stem and head are built for it
    needs_image = True

    def __init__(self, spec: BackboneSpec, factor: int = 4, layer_indices: Optional[Sequence[int]] = None,
                 query_dim: Optional[int] = None, width: int = 96, n_heads: int = 8, n_points: int = 4,
                 head_blocks: int = 1, mlp_ratio: float = 2.0, drop_path: float = 0.1, taps_per_extractor: int = 2,
                 zero_start: bool = False):
        d = spec.embed_dim
        step = 2 * n_heads
        query_dim = int(query_dim or max(step, round(d / 3 / step) * step))
        if query_dim % (2 * n_heads):
            raise ValueError(f"query_dim ({query_dim}) must divide by 2 * n_heads ({2 * n_heads}): the "
                             f"deformable attention's value channels (query_dim / 2) are split over the heads")
        if width % 8:
            raise ValueError(f"width must be a multiple of 8 (the stem's first conv has width / 2 channels, "
                             f"the head's mix 4 groups), got {width}")
        taps = tuple(int(i) for i in (default_taps(spec) if layer_indices is None else layer_indices))
        if not taps:
            raise ValueError("BRIXEL-lean needs at least one tapped layer")
        if taps_per_extractor < 1 or len(taps) % taps_per_extractor:
            raise ValueError(f"taps_per_extractor={taps_per_extractor} must divide the {len(taps)} tapped layers")
        super().__init__(spec, factor, taps, query_dim=query_dim, width=int(width), n_heads=int(n_heads),
                         n_points=int(n_points), head_blocks=int(head_blocks), mlp_ratio=float(mlp_ratio),
                         drop_path=float(drop_path), taps_per_extractor=int(taps_per_extractor),
                         zero_start=bool(zero_start))
        self.config["layer_indices"] = list(taps)
        self.taps_per_extractor = int(taps_per_extractor)
        # stem: strides 4 (s1) and 8 (s2)
        self.stem = nn.Sequential(*conv_bn_relu(3, width // 2, 2), *conv_bn_relu(width // 2, width, 2),
                                  *conv_bn_relu(width, width, 1))
        self.down = nn.Sequential(*conv_bn_relu(width, 2 * width, 2))
        self.query_in = nn.Conv2d(2 * width, query_dim, 1)
        self.level_embed = nn.Parameter(torch.zeros(query_dim))
        # one extractor per tapped layer, reading it through a projection to the query width
        self.tap_proj = nn.ModuleList([nn.Linear(d, query_dim) for _ in taps])
        self.extractors = nn.ModuleList([
            Extractor(query_dim, n_heads=n_heads, n_points=n_points, ratio=0.5, ffn_ratio=0.25, drop_path=drop_path,
                      n_levels=taps_per_extractor)
            for _ in range(len(taps) // taps_per_extractor)])
        # head at 4x, ``width`` channels
        self.query_out = nn.Linear(query_dim, width)
        self.fuse_norm = LayerNorm2d(width)
        self.trunk = nn.Sequential(*[ConvNeXtBlock(width, kernel_size=3, mlp_ratio=mlp_ratio, ls_init_value=None)
                                     for _ in range(head_blocks)])
        self.head_norm = LayerNorm2d(width)
        self.out_conv = nn.Conv2d(width, d, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(init_weights)
        for m in self.modules():  # after the generic Linear init, which would overwrite it
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed, std=0.02)
        if self.zero_start:
            zero_init(self.out_conv)

    def residual(self, source: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """The head adds to the bilinear enlargement of the last tapped layer, with or without zero start."""
        return self.interpolation_base(source, size)

    def source_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor]) -> torch.Tensor:
        return check_taps(self, image, layers)[-1]

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: torch.Tensor,
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        taps = check_taps(self, image, layers)
        h, w = taps[-1].shape[-2:]
        size1, size2 = (4 * h, 4 * w), (2 * h, 2 * w)
        # channels-last maps throughout: tokens and maps are views of each other (no copies)
        image = image.contiguous(memory_format=torch.channels_last)
        s1 = resize_to(run_folded(self.stem, image), size1)
        q = to_tokens(resize_to(self.query_in(run_folded(self.down, s1)), size2)) + self.level_embed
        ref = reference_points([size2], image.device)
        feats = [proj(to_tokens(tap)) for proj, tap in zip(self.tap_proj, taps)]
        k = self.taps_per_extractor
        for i, extractor in enumerate(self.extractors):
            group = feats[i * k:(i + 1) * k]
            q = extractor(q, ref, group[0] if k == 1 else torch.cat(group, 1), [(h, w)] * k, [size2])
        x = self.fuse_norm(s1 + resize_to(to_map(self.query_out(q), size2), size1))
        x = self.head_norm.ln(self.trunk(x).permute(0, 2, 3, 1))  # (B, 4h, 4w, width)
        # out_conv is applied onto the base by compose: one multiply-accumulate writes the D-wide output
        return LastProjection(x, self.out_conv)
