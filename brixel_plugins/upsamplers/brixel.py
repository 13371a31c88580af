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

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..backbones.dinov3 import ARCHS, BackboneSpec
from ..backbones.weights import WeightFileError
from .base import LastProjection, Upsampler, register_upsampler, zero_init
from .layers.adapter import Extractor, conv_bn_relu, init_weights
from .layers.deform_attn import MSDeformAttn, reference_points
from .layers.layout import accumulate_pointwise, channels_last, pointwise, resize_to, run_folded, to_map, to_tokens
from .layers.norm import LayerNorm2d
from .layers.taps import check_taps, default_taps


# --------------------------------------------------------------------------------------------
# adapter parts
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# head
# --------------------------------------------------------------------------------------------


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
