"""BRIXEL (Lappe & Giese 2025): a ViT-Adapter-style extractor + small conv head, 4x upsampling.

``Brixel.forward(image (B,3,H,W), layers {i: (B,D,h,w)}) -> (B,D,4h,4w)`` with ``h, w = H/16, W/16``.

Data flow (the authors' released model; docs/methods.md describes the method):

1. Spatial prior module (conv stem on the ImageNet-normalised image) -> c1 at stride 4 and c2 at
   stride 8, projected to D and resized bilinearly to exactly 4x and 2x the token grid.
2. Queries = c2's tokens + ``level_embed``. Interaction k (k = 0..3) refines them with an
   extractor (LayerNorm -> deformable cross-attention into tapped layer k's tokens, then a
   ConvFFN with drop-path); interaction 3 has two extra extractors on the same layer.
3. ``f1 = norm1(c1 + bilinear_2x(c2))`` -> conv head -> ``+ base``, where base is the last tapped
   layer shrunk bilinearly to half the grid and enlarged to 4x (a blurring quirk kept for weight
   compatibility; ``residual_base="direct"`` enlarges straight to 4x).

What the release computes but we do not: it also builds query levels c3 and c4 (``spm.conv3``,
``spm.conv4``, ``spm.fc3``, ``spm.fc4`` and two more rows of ``level_embed``), a pixel-shuffle
``up``, ``guide_proj`` and ``norm2..4``. None of them reaches the output: ``up``, ``guide_proj`` and
``norm2..4`` are never called, and c3/c4 queries cannot influence c2's, because every operation
on the queries works per token except the depthwise conv of the FFN, which is applied per level.
The release-layout loader checks that those keys are there (with the shapes the release gives
them) and drops them, as timm's ``checkpoint_filter_fn`` does: same output, 47% fewer
parameters, no unused parameter under DDP.

Odd token grids: any H, W multiple of 16 works (16x16 and rectangular included); the residual
base's half grid is ``(max(1, h // 2), max(1, w // 2))`` (floor, as the release; the clamp to 1
is ours, for a one-token side where the release fails).

Parameter count (conv base width 64, ViT-Adapter widths):
    SPM            149,824 + 194 D       (stem 3->64->64->64 and conv2 64->128 with BN affine;
                                          fc1, fc2 1x1 {64, 128} -> D with bias)
    level_embed    D
    extractor x6   1.5 D^2 + 203.25 D + 192  (2 LN + offsets D->128 + weights D->64 + value
                                          D->D/2 + output D/2->D + FFN D->D/4, dw3x3, D/4->D + LN)
    norm1          2 D                   (GroupNorm(32, D))
    adapter total  9 D^2 + 1416.5 D + 150,976    S 2.022M, B 6.547M, L 11.039M, H+ 16.710M
    head (w=64)    129 D + 36,736               S 0.086M, B 0.136M, L 0.169M, H+ 0.202M
The release as built (3.870M + 0.086M for S) adds 5 D^2 + 585 D + 885,808 of the modules above;
those counts, which the authors quote, are what fixed the shapes of the implicit modules.
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
from .layers.deform_attn import MSDeformAttn
from .layers.layout import accumulate_pointwise, channels_last, pointwise, run_folded
from .base import LastProjection, Upsampler, register_upsampler, zero_init

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


def reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of each level, normalised ``(x, y)`` in (0, 1): ``(1, sum H*W, 1, 2)``."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    return torch.cat(refs, 0)[None, :, None, :]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def to_map(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a channels-last view of contiguous tokens. (Through (B, H, W, C),
    so that a batch of one gets the canonical channels-last strides: torch's kernels take a map
    whose size-1 batch dimension has another stride for NCHW and answer in NCHW.)"""
    return x.reshape(x.shape[0], *hw, x.shape[2]).permute(0, 3, 1, 2)


def resize_to(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to ``size``, channels-last (:mod:`~brixel_plugins.upsamplers.layers.layout`:
    ~30x faster than on an NCHW map on CPU); the identity when the size already fits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(channels_last(x), size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# adapter parts
# --------------------------------------------------------------------------------------------
def conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """Conv stem on the image: ``(B,3,H,W) -> s1 (B,width,H/4,W/4), c2 (B,D,*size2)``.

    ``s1`` is the stride-4 map before ``fc1`` (the adapter adds ``fc1(s1)`` straight onto the
    enlarged queries), ``c2`` the stride-8 map through ``fc2``, resized to ``size2``. BatchNorm
    replaces the release's SyncBatchNorm (identical on one device; the state-dict keys are the same).
    """

    def __init__(self, dim: int, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, width, 2), *conv_bn_relu(width, width, 1),
                                  *conv_bn_relu(width, width, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*conv_bn_relu(width, 2 * width, 2))
        self.fc1 = nn.Conv2d(width, dim, 1)
        self.fc2 = nn.Conv2d(2 * width, dim, 1)

    def forward(self, image: torch.Tensor, size2: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        s1 = run_folded(self.stem, channels_last(image))
        return s1, resize_to(pointwise(self.fc2, run_folded(self.conv2, s1)), size2)


class DWConv(nn.Module):
    """Depthwise 3x3 applied separately to each query level: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        if len(shapes) == 1:  # one level: no split and concatenation (copies)
            return to_tokens(self.dwconv(to_map(x, shapes[0])))
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([to_tokens(self.dwconv(to_map(p, hw))) for p, hw in zip(parts, shapes)], 1)


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
    """Queries read backbone tokens: ``q + attn(LN q, LN feat)``, then ``+ drop_path(FFN(LN q))``.

    Shapes: ``q (B, Lq, D)``, ``feat (B, S, D)`` -> ``(B, Lq, D)``; ``feat`` holds ``n_levels``
    maps flattened and concatenated, of sizes ``feat_shapes`` (a list of ``(h, w)``, ``S = sum h*w``).
    """

    def __init__(self, dim: int, n_heads: int = 16, n_points: int = 4, ratio: float = 0.5,
                 ffn_ratio: float = 0.25, drop_path: float = 0.3, n_levels: int = 1):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.feat_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MSDeformAttn(dim, n_levels=n_levels, n_heads=n_heads, n_points=n_points, ratio=ratio)
        self.ffn = ConvFFN(dim, int(dim * ffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, q: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor,
                feat_shapes: Sequence[Tuple[int, int]], q_shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        q = q + self.attn(self.query_norm(q), ref, self.feat_norm(feat), feat_shapes)
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
        feat_shapes = [feat_hw]  # one tapped layer: one level
        q = self.extractor(q, ref, feat, feat_shapes, q_shapes)
        if self.extra_extractors is not None:
            for ext in self.extra_extractors:
                q = ext(q, ref, feat, feat_shapes, q_shapes)
        return q


class BrixelAdapter(nn.Module):
    """``(image (B,3,H,W), taps [4 x (B,D,h,w)]) -> f1 (B,D,4h,4w)``."""

    def __init__(self, dim: int, n_taps: int = 4, drop_path: float = 0.3):
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(dim))  # the release's row for c2 (see module doc)
        self.spm = SpatialPriorModule(dim)
        kw = dict(n_heads=16, n_points=4, ratio=0.5, ffn_ratio=0.25, drop_path=drop_path)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, n_extra=2 if i == n_taps - 1 else 0, **kw) for i in range(n_taps)])
        self.norm1 = nn.GroupNorm(32, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in (self.spm, self.interactions):
            mod.apply(init_weights)
        for m in self.modules():  # after the generic Linear init, which would overwrite it
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, image: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        h, w = taps[0].shape[-2:]
        size1, size2 = (4 * h, 4 * w), (2 * h, 2 * w)
        s1, c2 = self.spm(image, size2)
        q = to_tokens(c2) + self.level_embed
        ref = reference_points([size2], image.device)
        for block, tap in zip(self.interactions, taps):
            q = block(q, ref, to_tokens(tap), (h, w), [size2])
        # c1 = fc1(s1) is added as a matrix multiply-accumulate onto the enlarged queries, its bias
        # added to the queries before the enlargement (bilinear weights sum to 1): one pass over
        # the D-wide map instead of three (bias broadcast, product, sum). Same values up to rounding.
        fc1 = self.spm.fc1
        out = channels_last(resize_to(to_map(q + fc1.bias.to(q.dtype), size2), size1))  # a fresh map
        # (the resize of s1 never runs for images of 16 px multiples)
        return self.norm1(accumulate_pointwise(out, resize_to(s1, size1), fc1.weight))


def init_weights(m: nn.Module) -> None:
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but ``out_conv``: (B,D,H,W) -> (B,H,W,width), pixel-major."""
        x = pointwise(self.align_in, channels_last(x))
        x = x + self.trunk(x)  # the blocks are residual too: the release adds the input twice
        return self.head_norm.ln(self.mix(x).permute(0, 2, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LastProjection(self.features(x), self.out_conv).onto(None)


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
        zero_start: the head's output is added to the direct bilinear 4x enlargement of the last
            tapped layer (instead of the residual base) and ``head.out_conv`` starts at zero, so
            the untrained module is bilinear interpolation (the :meth:`Upsampler.forward`
            template); the authors' files need the default False.
    """

    fixed_factor = 4  # its head and c1 level are built for it
    needs_image = True

    def __init__(self, spec: BackboneSpec, factor: int = 4, layer_indices: Optional[Sequence[int]] = None,
                 drop_path: float = 0.3, residual_base: str = "release", zero_start: bool = False):
        if spec.embed_dim % 32:
            raise ValueError(f"BRIXEL needs embed_dim divisible by 32 (GroupNorm(32), 16 deformable heads "
                             f"on D/2 channels), got {spec.embed_dim}")
        if residual_base not in ("release", "direct"):
            raise ValueError(f"residual_base must be 'release' or 'direct', got {residual_base!r}")
        taps = tuple(int(i) for i in (default_taps(spec) if layer_indices is None else layer_indices))
        if len(taps) != 4:
            raise ValueError(f"BRIXEL taps exactly 4 layers, got {list(taps)}")
        super().__init__(spec, factor, taps, drop_path=float(drop_path), residual_base=residual_base,
                         zero_start=bool(zero_start))
        self.config["layer_indices"] = list(taps)  # saved, so a file rebuilds with the same taps
        self.taps = taps
        self.residual_base = residual_base
        self.adapter = BrixelAdapter(spec.embed_dim, len(taps), drop_path)
        self.head = ConvHead(spec.embed_dim, width=64)
        if self.zero_start:
            zero_init(self.head.out_conv)

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """The authors' keys minus their frozen backbone and the modules that never reach the
        output (checked present with the release's shapes, then dropped)."""
        sd = {k: v for k, v in sd.items() if not k.startswith(_BACKBONE_PREFIXES)}
        if "adapter.level_embed" not in sd:
            raise WeightFileError(f"{source} is not a BRIXEL checkpoint: no 'adapter.level_embed' among "
                                  f"{len(sd)} keys (first: {sorted(sd)[:5]})")
        d_file = int(sd["adapter.level_embed"].shape[-1])
        if d_file != self.embed_dim:
            raise WeightFileError(
                f"{source} is a BRIXEL checkpoint with embed_dim D={d_file}, but the backbone "
                f"({self.spec.arch}) has D={self.embed_dim}; use the checkpoint released for "
                f"{'/'.join(a for a, i in ARCHS.items() if i.embed_dim == d_file) or 'another backbone'}")
        unused = release_only_shapes(d_file)
        bad = [] if tuple(sd["adapter.level_embed"].shape) == (3, d_file) else [
            f"adapter.level_embed {tuple(sd['adapter.level_embed'].shape)} (release: {(3, d_file)})"]
        bad += [f"{k} {tuple(sd[k].shape) if k in sd else 'missing'} (release: {shape})"
               for k, shape in unused.items()
               if tuple(sd.get(k, torch.empty(0)).shape) != shape and not k.endswith("num_batches_tracked")]
        if bad:
            raise WeightFileError(f"{source} is not in the released BRIXEL layout: {len(bad)} keys of the "
                                  f"release's unused modules differ, e.g. {bad[:3]}")
        sd = {k: v for k, v in sd.items() if k not in unused}
        sd["adapter.level_embed"] = sd["adapter.level_embed"][0]  # the c2 row; c3 and c4 are gone
        return sd

    def residual(self, source: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """The residual base from the last tapped layer ``source`` (B,D,h,w) at ``size`` (4h, 4w)."""
        h, w = source.shape[-2:]
        if self.residual_base == "release":
            source = resize_to(source, (max(1, h // 2), max(1, w // 2)))
        return resize_to(source, size)

    def source_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor]) -> torch.Tensor:
        return check_taps(self, image, layers)[-1]

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: torch.Tensor,
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        # out_conv is applied onto the base by compose (one multiply-accumulate)
        return LastProjection(self.head.features(self.adapter(image, check_taps(self, image, layers))),
                              self.head.out_conv)


def check_taps(up: Upsampler, image: torch.Tensor, layers: Mapping[int, torch.Tensor]) -> List[torch.Tensor]:
    """The tapped layers of ``up`` from ``layers``, after checking they are all there and that
    ``image`` (B,3,H,W) is the picture of their token grid."""
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


# --------------------------------------------------------------------------------------------
# released weights
# --------------------------------------------------------------------------------------------
_BACKBONE_PREFIXES = ("adapter.backbone.", "backbone.")  # the release saves its frozen backbone too


def release_only_shapes(dim: int) -> Dict[str, Tuple[int, ...]]:
    """Keys (and shapes) of the released modules whose output is never used, for embed_dim ``dim``:
    the c3/c4 query levels of the spatial prior, ``up`` (1x1 D->4D, pixel-shuffle, dw3x3, 1x1),
    ``guide_proj`` (1x1 D->48) and ``norm2..4``."""
    out: Dict[str, Tuple[int, ...]] = {}

    def conv_bn(prefix: str, cin: int, cout: int) -> None:
        out[f"{prefix}.0.weight"] = (cout, cin, 3, 3)
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.1.{k}"] = (cout,)
        out[f"{prefix}.1.num_batches_tracked"] = ()

    def conv(prefix: str, cin: int, cout: int, k: int = 1, groups: int = 1) -> None:
        out[f"{prefix}.weight"] = (cout, cin // groups, k, k)
        out[f"{prefix}.bias"] = (cout,)

    conv_bn("adapter.spm.conv3", 128, 256)
    conv_bn("adapter.spm.conv4", 256, 256)
    conv("adapter.spm.fc3", 256, dim)
    conv("adapter.spm.fc4", 256, dim)
    conv("adapter.up.expand", dim, 4 * dim)
    conv("adapter.up.post.0", dim, dim, k=3, groups=dim)
    conv("adapter.up.post.1", dim, dim)
    conv("adapter.guide_proj.0", dim, 48)
    for i in (2, 3, 4):
        out[f"adapter.norm{i}.weight"] = out[f"adapter.norm{i}.bias"] = (dim,)
    return out
