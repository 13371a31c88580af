"""BRIXEL (Lappe & Giese 2025): a ViT-Adapter-style extractor + small conv head, 4x upsampling.

``Brixel.forward(image (B,3,H,W), layers {i: (B,D,h,w)}) -> (B,D,4h,4w)`` with ``h, w = H/16, W/16``.

Data flow (release behaviour, the default; see METHODS.md "BRIXEL"):

1. Spatial prior module (conv stem on the ImageNet-normalised image) -> c1..c4, each resized
   bilinearly to exactly 4x, 2x, 1x and 0.5x the token grid.
2. Queries = concat(c2, c3, c4) tokens + ``level_embed``. Interaction k (k = 0..3) refines them
   with an extractor (LayerNorm -> deformable cross-attention into tapped layer k's tokens, then a
   ConvFFN with drop-path); interaction 3 has two extra extractors on the same layer.
3. ``f1 = norm1(c1 + bilinear_2x(c2))`` -> conv head -> ``+ base``, where base is the last tapped
   layer shrunk bilinearly to half the grid and enlarged to 4x (a blurring quirk kept for weight
   compatibility).

Rounding rule for odd token grids (any H, W multiple of 16 works, 16x16 and rectangular included):
c1 = (4h, 4w), c2 = (2h, 2w), c3 = (h, w), c4 = (max(1, h // 2), max(1, w // 2)); the residual base
uses the same half size. Floor division matches the release for every grid it supports
(h, w >= 2); the clamp to 1 is ours, for a one-token side (the release fails there).

Release vs paper: the paper describes the method as a trainable adapter plus conv head on the
frozen student; the details below (and the key names) follow the authors' released code so that
their checkpoints load with ``strict=True``. Release-only artefacts kept for that reason:
``up`` (pixel-shuffle 2x), ``guide_proj`` and ``norm2..4`` are built and saved but never run,
and the residual base goes through half resolution. ``residual_base="direct"`` enlarges the last
tapped layer straight to 4x instead (cheap option; released weights were trained with "release").

Parameter count (how the implicit shapes were fixed; ViT-Adapter widths, conv base width 64):
    SPM            1,035,584 + 708 D     (stem 3->64->64->64, conv2..4 64->128->256->256, BN
                                          affine; fc1..fc4 1x1 {64,128,256,256} -> D with bias)
    level_embed    3 D
    extractor x6   1.5 D^2 + 203.25 D + 192  (2 LN + offsets D->128 + weights D->64 + value
                                          D->D/2 + output D/2->D + FFN D->D/4, dw3x3, D/4->D + LN)
    up             5 D^2 + 15 D          (1x1 D->4D, pixel-shuffle, dw3x3 D, 1x1 D->D)
    norm1..4       8 D                   (GroupNorm(32, D))
    guide_proj     48 D + 48             (1x1 D->48, ReLU)
    adapter total  14 D^2 + 2001.5 D + 1,036,784
                   S 3.870M, B 10.831M, L 17.766M, H+ 26.536M (METHODS.md: 3.87/10.8/17.8/26.5M)
    head (w=64)    129 D + 36,736        S 0.086M ... H+ 0.202M (METHODS.md: ~0.09M ... 0.2M)
The counts pin ``up`` down: a bare ConvTranspose2d(D, D, 2, 2) or a pixel-shuffle without the
dw3x3 + 1x1 ``post`` convs (4 D^2 + ...) misses S by -4%. They cannot pin ``guide_proj``'s width
(48 D is 0.5% of S); 48 outputs, the widths of ``up.post`` and the channel-LayerNorm eps 1e-6 were
checked against the authors' public code so that the tensor shapes of their checkpoints match.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from ..backbones.dinov3 import ARCHS, BackboneSpec
from ..backbones.weights import WeightFileError
from ..ops.deform_attn import MSDeformAttn
from .base import Upsampler, register_upsampler

# Tapped layers of the released models (0-based block indices).
RELEASE_TAPS: Dict[str, Tuple[int, ...]] = {
    "vits16": (3, 6, 9, 11),
    "vits16plus": (3, 6, 9, 11),
    "vitb16": (3, 6, 9, 11),
    "vitl16": (6, 12, 18, 23),
    "vith16plus": (8, 16, 24, 31),
}

LN_EPS = 1e-6


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


def level_sizes(h: int, w: int) -> List[Tuple[int, int]]:
    """Sizes of c1..c4 for an ``h x w`` token grid (see the module docstring for the rule)."""
    return [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (max(1, h // 2), max(1, w // 2))]


def reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of each level, normalised ``(x, y)`` in (0, 1): ``(1, sum H*W, 1, 2)``."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    return torch.cat(refs, 0)[None, :, None, :]


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _to_map(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


# --------------------------------------------------------------------------------------------
# adapter parts
# --------------------------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem on the image: ``(B,3,H,W) -> [c1..c4]`` maps ``(B,D,*level_sizes)``.

    Strides 4/8/16/32 before the final resize. BatchNorm replaces the release's SyncBatchNorm
    (identical on one device; the state-dict keys are the same).
    """

    def __init__(self, dim: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, width, 2), *_conv_bn_relu(width, width, 1),
                                  *_conv_bn_relu(width, width, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(width, 2 * width, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * width, 4 * width, 2))
        self.fc1 = nn.Conv2d(width, dim, 1)
        self.fc2 = nn.Conv2d(2 * width, dim, 1)
        self.fc3 = nn.Conv2d(4 * width, dim, 1)
        self.fc4 = nn.Conv2d(4 * width, dim, 1)

    def forward(self, image: torch.Tensor, sizes: Sequence[Tuple[int, int]], n_levels: int = 4) -> List[torch.Tensor]:
        """The first ``n_levels`` of c1..c4, each resized to ``sizes[k]``."""
        s1 = self.stem(image)
        feats = [s1]
        x = s1
        for conv in (self.conv2, self.conv3, self.conv4)[: n_levels - 1]:
            x = conv(x)
            feats.append(x)
        out = []
        for k, (f, fc) in enumerate(zip(feats, (self.fc1, self.fc2, self.fc3, self.fc4))):
            f = fc(f)
            if tuple(f.shape[-2:]) != tuple(sizes[k]):  # a same-size bilinear resize is the identity
                f = F.interpolate(f, size=sizes[k], mode="bilinear", align_corners=False)
            out.append(f)
        return out


class DWConv(nn.Module):
    """Depthwise 3x3 applied separately to each query level: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([_to_tokens(self.dwconv(_to_map(p, hw))) for p, hw in zip(parts, shapes)], 1)


class ConvFFN(nn.Module):
    """Linear D->hidden, per-level depthwise 3x3, GELU, linear hidden->D."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Extractor(nn.Module):
    """Queries read one backbone layer: ``q + attn(LN q, LN feat)``, then ``+ drop_path(FFN(LN q))``.

    Shapes: ``q (B, Lq, D)``, ``feat (B, h*w, D)`` -> ``(B, Lq, D)``.
    """

    def __init__(self, dim: int, n_heads: int = 16, n_points: int = 4, ratio: float = 0.5,
                 ffn_ratio: float = 0.25, drop_path: float = 0.3):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=n_heads, n_points=n_points, ratio=ratio)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, q: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor, feat_hw: Tuple[int, int],
                q_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        q = q + self.attn(self.query_norm(q), ref, self.feat_norm(feat), [feat_hw])
        return q + self.drop_path(self.ffn(self.ffn_norm(q), q_shapes))


class InteractionBlock(nn.Module):
    """One tapped layer: an extractor (plus ``n_extra`` more on the same layer, last block only).
    Nothing is injected back into the frozen backbone."""

    def __init__(self, dim: int, n_extra: int = 0, **kw):
        super().__init__()
        self.extractor = Extractor(dim, **kw)
        if n_extra:
            self.extra_extractors = nn.Sequential(*[Extractor(dim, **kw) for _ in range(n_extra)])
        else:
            self.extra_extractors = None

    def forward(self, q, ref, feat, feat_hw, q_shapes):
        q = self.extractor(q, ref, feat, feat_hw, q_shapes)
        if self.extra_extractors is not None:
            for ext in self.extra_extractors:
                q = ext(q, ref, feat, feat_hw, q_shapes)
        return q


class PixelShuffleUp(nn.Module):
    """Release-only ``up`` (never run in the forward pass; kept so checkpoints load strictly):
    1x1 D->4D, pixel-shuffle 2x, depthwise 3x3, 1x1. ``(B,D,h,w) -> (B,D,2h,2w)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Conv2d(dim, 4 * dim, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.post = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.shuffle(self.expand(x)))


class BrixelAdapter(nn.Module):
    """``(image (B,3,H,W), taps [4 x (B,D,h,w)]) -> f1 (B,D,4h,4w)``."""

    def __init__(self, dim: int, n_taps: int = 4, drop_path: float = 0.3, skip_dead_levels: bool = False):
        super().__init__()
        self.skip_dead_levels = skip_dead_levels
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(dim)
        kw = dict(n_heads=16, n_points=4, ratio=0.5, ffn_ratio=0.25, drop_path=drop_path)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, n_extra=2 if i == n_taps - 1 else 0, **kw) for i in range(n_taps)])
        # release-only, never run (see module docstring)
        self.up = PixelShuffleUp(dim)
        self.norm1 = nn.GroupNorm(32, dim)
        self.norm2 = nn.GroupNorm(32, dim)
        self.norm3 = nn.GroupNorm(32, dim)
        self.norm4 = nn.GroupNorm(32, dim)
        self.guide_proj = nn.Sequential(nn.Conv2d(dim, 48, 1), nn.ReLU(inplace=True))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in (self.spm, self.interactions, self.up):
            mod.apply(_init_weights)
        for m in self.modules():  # after the generic Linear init, which would overwrite it
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, image: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        b, d, h, w = taps[0].shape
        sizes = level_sizes(h, w)
        # c3 and c4 never reach the output: every op on the queries is per token except the
        # per-level depthwise conv, so c2's tokens evolve independently of them. skip_dead_levels
        # drops them (same output, ~25% fewer query tokens); the default computes them like the release.
        n_query_levels = 1 if self.skip_dead_levels else 3
        c = self.spm(image, sizes, n_levels=1 + n_query_levels)
        c1, queries = c[0], c[1:]
        q_shapes = sizes[1:1 + n_query_levels]
        q = torch.cat([_to_tokens(x) + self.level_embed[k] for k, x in enumerate(queries)], 1)
        ref = reference_points(q_shapes, image.device)
        for block, tap in zip(self.interactions, taps):
            q = block(q, ref, _to_tokens(tap), (h, w), q_shapes)
        c2 = _to_map(q[:, : sizes[1][0] * sizes[1][1]], sizes[1])
        c1 = c1 + F.interpolate(c2, size=sizes[0], mode="bilinear", align_corners=False)
        return self.norm1(c1)


def _init_weights(m: nn.Module) -> None:
    """Init of the adapter (ViT-Adapter style): truncated-normal linears, He-normal (fan-out) convs."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# head
# --------------------------------------------------------------------------------------------
class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B,C,H,W) map (key ``.ln`` as in the release; eps 1e-6)."""

    def __init__(self, dim: int, eps: float = LN_EPS):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DWResBlock(nn.Module):
    """``x + [LN -> dw3x3 -> GELU -> 1x1 -> GELU -> 1x1](x)``, width C throughout."""

    def __init__(self, width: int):
        super().__init__()
        self.block = nn.Sequential(LayerNorm2d(width), nn.Conv2d(width, width, 3, padding=1, groups=width),
                                   nn.GELU(), nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ConvHead(nn.Module):
    """``(B,D,H,W) -> (B,D,H,W)``: 1x1 D->w, ``x + trunk(x)``, grouped 3x3 mix, LN, 1x1 w->D.
    (The residual base is added by :class:`Brixel`.)"""

    def __init__(self, dim: int, width: int = 64, blocks: int = 3, groups: int = 4):
        super().__init__()
        self.align_in = nn.Conv2d(dim, width, 1)
        self.trunk = nn.Sequential(*[DWResBlock(width) for _ in range(blocks)])
        self.mix = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.head_norm = LayerNorm2d(width)
        self.out_conv = nn.Conv2d(width, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.align_in(x)
        x = x + self.trunk(x)  # the blocks are residual too: the release adds the input twice
        return self.out_conv(self.head_norm(self.mix(x)))


# --------------------------------------------------------------------------------------------
# the upsampler
# --------------------------------------------------------------------------------------------
@register_upsampler("brixel")
class Brixel(Upsampler):
    """BRIXEL: ``forward(image (B,3,H,W), layers {i: (B,D,H/16,W/16)}) -> (B,D,H/4,W/4)``.

    Args:
        spec: the frozen backbone's spec (D must divide by 32: GroupNorm(32) and 16 heads on D/2).
        factor: must be 4 (fixed by the method).
        layer_indices: the 4 tapped layers; default :func:`default_taps`.
        drop_path: drop-path rate on the extractors' FFN branch (training only).
        residual_base: ``"release"`` (last tap -> half grid -> 4x, default) or ``"direct"`` (-> 4x).
        skip_dead_levels: skip the c3/c4 queries that cannot affect the output (same result, faster).
        zero_start: start from bilinear interpolation of the last tapped layer
            (:meth:`Upsampler.from_interpolation`; the authors' files need the default False).
    """

    needs_image = True

    def __init__(self, spec: BackboneSpec, factor: int = 4, layer_indices: Optional[Sequence[int]] = None,
                 drop_path: float = 0.3, residual_base: str = "release", skip_dead_levels: bool = False,
                 zero_start: bool = False):
        if factor != 4:
            raise ValueError(f"BRIXEL upsamples by exactly 4 (its head and c1 level are built for it), got factor={factor}")
        if spec.embed_dim % 32:
            raise ValueError(f"BRIXEL needs embed_dim divisible by 32 (GroupNorm(32), 16 deformable heads "
                             f"on D/2 channels), got {spec.embed_dim}")
        if residual_base not in ("release", "direct"):
            raise ValueError(f"residual_base must be 'release' or 'direct', got {residual_base!r}")
        taps = tuple(int(i) for i in (default_taps(spec) if layer_indices is None else layer_indices))
        if len(taps) != 4:
            raise ValueError(f"BRIXEL taps exactly 4 layers, got {list(taps)}")
        super().__init__(spec, factor, taps, drop_path=float(drop_path), residual_base=residual_base,
                         skip_dead_levels=bool(skip_dead_levels), zero_start=bool(zero_start))
        self.config["layer_indices"] = list(taps)  # saved, so a file rebuilds with the same taps
        self.taps = taps
        self.residual_base = residual_base
        self.adapter = BrixelAdapter(spec.embed_dim, len(taps), drop_path, skip_dead_levels)
        self.head = ConvHead(spec.embed_dim, width=64)

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """Released keys are ours; drop the frozen backbone the release saves alongside."""
        sd = {k: v for k, v in sd.items() if not k.startswith(_DROP_PREFIXES)}
        if "adapter.level_embed" not in sd:
            raise WeightFileError(f"{source} is not a BRIXEL checkpoint: no 'adapter.level_embed' among "
                                  f"{len(sd)} keys (first: {sorted(sd)[:5]})")
        d_file = int(sd["adapter.level_embed"].shape[-1])
        if d_file != self.embed_dim:
            raise WeightFileError(
                f"{source} is a BRIXEL checkpoint with embed_dim D={d_file}, but the backbone "
                f"({self.spec.arch}) has D={self.embed_dim}; use the checkpoint released for "
                f"{'/'.join(a for a, i in ARCHS.items() if i.embed_dim == d_file) or 'another backbone'}")
        return sd

    def base(self, last: torch.Tensor) -> torch.Tensor:
        """Residual base from the last tapped layer: ``(B,D,h,w) -> (B,D,4h,4w)``."""
        h, w = last.shape[-2:]
        if self.residual_base == "release":
            last = F.interpolate(last, size=(max(1, h // 2), max(1, w // 2)), mode="bilinear", align_corners=False)
        return F.interpolate(last, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor],
                backbone: Optional[nn.Module] = None, image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        missing = [i for i in self.taps if i not in layers]
        if missing:
            raise KeyError(f"BRIXEL needs backbone layers {list(self.taps)}; missing {missing}")
        taps = [layers[i] for i in self.taps]
        h, w = taps[-1].shape[-2:]
        p = self.spec.patch_size
        if image.shape[-2:] != (h * p, w * p):
            raise ValueError(f"image {tuple(image.shape[-2:])} does not match the {h}x{w} token grid "
                             f"(expected {(h * p, w * p)})")
        f1 = self.adapter(image, taps)
        return self.from_interpolation(self.head(f1) + self.base(taps[-1]), taps[-1])


# --------------------------------------------------------------------------------------------
# released weights
# --------------------------------------------------------------------------------------------
_DROP_PREFIXES = ("adapter.backbone.", "backbone.")  # the release saves its frozen backbone too
