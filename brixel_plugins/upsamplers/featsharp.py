"""FeatSharp (Ranzinger et al., ICML 2025): JBU-upsampled low-res features sharpened by tiles.

Pipeline for an image (B, 3, H, W) (the low-res view, grid h = H/16, w = W/16) and factor u:

1. Tiles: the image resized to (uH, uW) (bicubic, antialiased) is cut into u x u tiles of
   H x W. The frozen backbone runs ONCE on ``cat[image, tiles]`` (B * (1 + u^2) images).
2. De-bias: a learnable, zero-initialised (1, C, h0, w0) map (``debias``, at the reference grid
   ``debias_hw``, bilinearly resized to the actual grid) is added to every backbone output,
   the low-res map and each tile, to absorb the backbone's fixed-pattern (position) noise.
3. PHI-S (``phi_s``): every map is standardised, x' = alpha R (x - mu), with statistics fitted
   from backbone features before training (:meth:`calibrate`, :meth:`finish_calibration`) and saved
   with the weights.
4. Low-res path: :class:`~brixel_plugins.upsamplers.jbu.JBUStack` by u (one JBU per prime factor).
5. Tile path: tile maps + a learned per-tile position embedding (u^2, C), stitched to (u*h, u*w).
6. Fusion: one pre-norm transformer block on cat[JBU map, tile map] (2C channels): 2D local
   attention (window 7) + SwiGLU MLP, each with LayerScale; keep the first C channels.
7. Output: inverse PHI-S, i.e. back in the backbone's feature space (B, C, u*h, u*w), so
   consumers and the distillation teacher compare like with like.

LayerScale starts at exactly 0, so an untrained block is the identity and the output is the
(de-biased, PHI-S round-tripped) JBU map; LayerScale's own gradient is non-zero, so training
starts immediately.

Paper vs release (METHODS.md): window 7 is the release default (the paper's ablation prefers
3-5; ``window`` sets it); u is any integer >= 2 via prime-factor JBU stacks (FeatSharp's
generalisation). Choices of this implementation that METHODS.md does not fix: heads = 2x the
backbone's (head dim 64 for DINOv3), SwiGLU hidden = 2/3 * mlp_ratio * 2C (rounded to 8),
LayerScale init 0 (for the exact identity at init), per-tile embedding init N(0, 0.02),
de-bias reference grid 16x16 (256 px), optional learned relative-position bias in the
attention (off by default).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..images import resize
from ..ops.local_attention import LocalAttention2d
from ..ops.phi_s import PhiS
from .base import Upsampler, register_upsampler
from .jbu import JBUStack

__all__ = ["FeatSharp", "FusionBlock", "SwiGLU"]


class SwiGLU(nn.Module):
    """(…, dim) -> (…, dim): w3(silu(a) * b) with [a, b] = w12(x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class FusionBlock(nn.Module):
    """Pre-norm transformer block on channels-last maps (B, H, W, dim) -> (B, H, W, dim):
    ``x + gamma1 * localattn(LN(x))``, then ``x + gamma2 * swiglu(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, window: int = 7, mlp_ratio: float = 4.0,
                 rel_pos_bias: bool = False, layerscale_init: float = 0.0):
        super().__init__()
        hidden = int(math.ceil(2 / 3 * mlp_ratio * dim / 8) * 8)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalAttention2d(dim, num_heads, window, rel_pos_bias=rel_pos_bias)
        self.gamma1 = nn.Parameter(torch.full((dim,), float(layerscale_init)))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, hidden)
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layerscale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


@register_upsampler("featsharp")
class FeatSharp(Upsampler):
    """FeatSharp by an integer ``factor`` u >= 2:
    ``forward(image (B,3,H,W), layers (unused), backbone) -> (B, C, u*H/16, u*W/16)``.

    Runs the backbone itself (1 + u^2 passes at H x W in one batch). Before training or use,
    PHI-S must be fitted (:meth:`calibrate` on backbone features, then :meth:`finish_calibration`);
    a loaded weight file carries the fitted statistics.
    """

    needs_image = True
    uses_image_hr = True  # the tiles are cut from the real pixels
    calls_backbone = True

    def __init__(self, spec: BackboneSpec, factor: int = 2, window: int = 7, num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0, debias_hw: Sequence[int] = (16, 16), rel_pos_bias: bool = False):
        if int(factor) != factor or factor < 2:
            raise ValueError(f"FeatSharp: factor must be an integer >= 2, got {factor!r}")
        dim = spec.embed_dim
        num_heads = 2 * spec.num_heads if num_heads is None else int(num_heads)
        debias_hw = [int(v) for v in debias_hw]
        if len(debias_hw) != 2 or min(debias_hw) < 1:
            raise ValueError(f"debias_hw must be two positive integers, got {debias_hw}")
        super().__init__(spec, factor, (), window=int(window), num_heads=num_heads, mlp_ratio=float(mlp_ratio),
                         debias_hw=debias_hw, rel_pos_bias=bool(rel_pos_bias))
        u = self.factor
        self.debias = nn.Parameter(torch.zeros(1, dim, *debias_hw))
        self.phi_s = PhiS(dim)
        self.jbu = JBUStack(dim, u)
        self.tile_pos = nn.Parameter(torch.empty(u * u, dim))
        nn.init.trunc_normal_(self.tile_pos, std=0.02)
        self.block = FusionBlock(2 * dim, num_heads, int(window), float(mlp_ratio), bool(rel_pos_bias))

    # -- pieces (also used by the distillation tool) -----------------------------------------
    def tiles(self, pixels: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """(B,3,H',W') -> (u*u*B, 3, H, W): the picture resized to (uH, uW) and cut into tiles of
        the working size ``hw`` = (H, W), tile-major (index ((ty*u + tx)*B + b))."""
        b, c = pixels.shape[:2]
        h, w = hw
        u = self.factor
        big = resize(pixels, (u * h, u * w))
        return big.view(b, c, u, h, u, w).permute(2, 4, 0, 1, 3, 5).reshape(u * u * b, c, h, w)

    def backbone_features(self, image: torch.Tensor, backbone: nn.Module,
                          image_hr: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One backbone call on cat[image, tiles of image_hr] -> raw (low-res (B,C,h,w), tile maps (u*u*B,C,h,w))."""
        b = image.shape[0]
        tiles = self.tiles(self.pixels(image, image_hr), tuple(image.shape[-2:]))
        feats = backbone.last_layer(torch.cat([image, tiles], dim=0))
        return feats[:b], feats[b:]

    def debiased(self, feats: torch.Tensor) -> torch.Tensor:
        """Add the de-bias map, resized to the grid of ``feats`` (N, C, h, w). Apply this to the
        backbone's features of a view to get the distillation target in the same space as the output."""
        hw = tuple(feats.shape[-2:])
        d = self.debias
        if hw != tuple(d.shape[-2:]):
            shrink = hw[0] < d.shape[-2] or hw[1] < d.shape[-1]
            d = F.interpolate(d, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
        return feats + d.to(feats.dtype)

    def stitch(self, tile_maps: torch.Tensor, batch: int) -> torch.Tensor:
        """(u*u*B, C, h, w) tile-major -> (B, C, u*h, u*w)."""
        u = self.factor
        _, c, h, w = tile_maps.shape
        return tile_maps.view(u, u, batch, c, h, w).permute(2, 3, 0, 4, 1, 5).reshape(batch, c, u * h, u * w)

    @property
    def calibrated(self) -> bool:
        return bool(self.phi_s.fitted)

    @torch.no_grad()
    def calibrate(self, feats: torch.Tensor) -> None:
        """Accumulate PHI-S statistics from backbone features (B, C, h, w) (``backbone.last_layer``)."""
        self.phi_s.update(feats)

    def finish_calibration(self) -> None:
        """Fit PHI-S from the accumulated statistics (do this before training)."""
        self.phi_s.fit()

    # -- forward -----------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor] = None,
                backbone: Optional[nn.Module] = None, image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        if backbone is None:
            raise ValueError("featsharp runs the backbone on its tiles: pass backbone= (DenseFeaturizer does)")
        if not self.calibrated:
            raise RuntimeError(
                "FeatSharp's PHI-S normaliser is not fitted: call calibrate(backbone.last_layer(x)) on "
                "a few batches of images, then finish_calibration() (the distillation tool does this), or load a "
                "trained FeatSharp weight file")
        b, c = image.shape[0], self.embed_dim
        lo, tile_maps = self.backbone_features(image, backbone, image_hr)
        feats = self.phi_s(self.debiased(torch.cat([lo, tile_maps], dim=0)))
        lo, tile_maps = feats[:b], feats[b:]
        tile_maps = tile_maps + self.tile_pos.to(feats.dtype).repeat_interleave(b, dim=0)[:, :, None, None]
        hi = self.jbu(lo, self.pixels(image, image_hr))
        x = torch.cat([hi, self.stitch(tile_maps, b)], dim=1).permute(0, 2, 3, 1)
        x = self.block(x)[..., :c].permute(0, 3, 1, 2)
        return self.phi_s.inverse(x.contiguous())
