"""FeatSharp (Ranzinger et al., ICML 2025) as released: JBU-upsampled low-res features sharpened
by the backbone's features of real high-resolution tiles.

For a working image of H x W (token grid h x w = H/16 x W/16), factor u and the picture at the
user's resolution ``image_hr``:

1. Views. The picture at u*H x u*W (``image_hr`` itself when it has that size, else resized to
   it) is cut into u x u non-overlapping H x W tiles: REAL pixels the low-res pass never saw.
   The low-res view is that picture resized bilinearly to H x W without antialiasing (as the
   release makes it, and as the training targets are made); without a larger ``image_hr``
   the working image itself is the low-res view and the tiles come from its u x enlargement.
   The backbone runs ONCE on cat[low-res, tiles] (B * (1 + u^2) images of H x W).
2. Every backbone map -> PHI-S (``phi_s``: x' = alpha R (x - mu), fitted from data) -> + the
   learned de-bias map (``debias`` (1, C, gh, gw), zeros, the backbone's fixed-pattern noise at
   the training grid; resized bilinearly to other grids).
3. Low-res path: :class:`~brixel_plugins.upsamplers.jbu.FeatSharpJBUStack` by u (one JBU per
   prime factor; bilinear source upsampling, no fixups), guided by the picture resized to the
   output grid (u*h x u*w; bilinear without antialiasing, as released) and average-pooled per level.
4. Tile path: tile maps stitched to (u*h, u*w) + ``tile_pos`` (1, C, u, u) (learned, zeros),
   entry (ty, tx) added to every pixel of tile (ty, tx).
5. Fusion: :class:`FusionBlock` on cat[JBU map, tile map] (2C channels), keeping C.
6. Output: inverse PHI-S, back in the backbone's feature space (B, C, u*h, u*w), so consumers
   and the distillation teacher compare like with like.

LayerScale starts at 1e-6, so an untrained block returns the JBU map up to ~1e-6.
``spectral_reparam=True`` (training only) reparametrises the block's linears
(:mod:`brixel_plugins.upsamplers.layers.spectral_reparam`); :meth:`FeatSharp.for_export` bakes them into plain
weights, which is what weight files hold. :meth:`FeatSharp.from_release_layout` reads the
authors' training checkpoints (see docs/featsharp.md).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from ..images import resize
from .base import DetailGate, Upsampler, register_upsampler
from .jbu import FeatSharpJBUStack
from .layers.local_attention import LocalAttention2d
from .layers.phi_s import PhiS, PhiSCalibration
from .layers.spectral_reparam import (
    SpectralStateError,
    bake_spectral_reparam,
    bake_spectral_state_dict,
    spectral_reparametrize,
)

__all__ = ["FeatSharp", "FusionBlock", "LayerScale", "SwiGLU", "swiglu_hidden", "low_res_view"]


def swiglu_hidden(out_dim: int) -> int:
    """The SwiGLU width of FeatSharp's block for C = ``out_dim``: ``(int(8C * 2/3) + 7) // 8 * 8``
    (DINOv2's rule for an MLP of ratio 4 at the block width 2C)."""
    return (int(8 * out_dim * 2 / 3) + 7) // 8 * 8


def low_res_view(image: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """The low-resolution view FeatSharp feeds the backbone (and its training targets are made
    of): bilinear, no antialiasing, as released."""
    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    return F.interpolate(image, size=tuple(hw), mode="bilinear", align_corners=False, antialias=False)


class LayerScale(nn.Module):
    """x * gamma, gamma (dim,) learned, initialised to ``init``."""

    def __init__(self, dim: int, init: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.to(x.dtype)


class SwiGLU(nn.Module):
    """(…, dim) -> (…, out): ``w3(silu(a) * b)`` with ``[a, b] = w12(x)``, biases on both."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class FusionBlock(nn.Module):
    """FeatSharp's block on channels-last maps (B, H, W, 2C) -> (B, H, W, C)::

        x = x + ls1(attn(norm1(x)))              # local attention with ALiBi, 16 heads, width 2C
        x = x[..., :C] + ls2(mlp(norm2(x)))     # SwiGLU 2C -> C

    so the output starts as the first C channels of the input (the JBU map).
    """

    def __init__(self, out_dim: int, num_heads: int = 16, window: int = 7, layerscale_init: float = 1e-6,
                 flex_attention: bool = False):
        super().__init__()
        dim = 2 * out_dim
        self.out_dim = int(out_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalAttention2d(dim, num_heads, window, flex=flex_attention)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, swiglu_hidden(out_dim), out_dim)
        self.ls2 = LayerScale(out_dim, layerscale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x[..., :self.out_dim] + self.ls2(self.mlp(self.norm2(x)))


@register_upsampler("featsharp")
class FeatSharp(PhiSCalibration, Upsampler):  # calibration = PHI-S's own statistics
    """FeatSharp by an integer ``factor`` u >= 2:
    ``forward(image (B,3,H,W), layers (unused), backbone, image_hr=None) -> (B, C, u*H/16, u*W/16)``.

    Args:
        factor: u (any integer >= 2; the JBU path has one layer per prime factor).
        window: local attention window (7 as released; the paper's ablation prefers 3-5).
        num_heads: attention heads (16 as released, whatever C is).
        debias_hw: grid (gh, gw) of the learned de-bias map: the token grid of the training
            resolution (32 x 32 for 512 px).
        spectral_reparam: reparametrise the block's linears (the training recipe); weight files
            hold them baked (:meth:`for_export`).
        flex_attention: use ``flex_attention`` on CUDA where torch has it (the windowed path
            otherwise; same result).
        zero_start: start new trainings from bilinear interpolation (not the release): the output
            is ``bilinear(last) + detail(FeatSharp - bilinear(last))`` with ``detail`` a
            :class:`~.base.DetailGate` starting at 0 and ``last`` the backbone's last layer of the
            working image (the :meth:`Upsampler.forward` template; it declares the last layer in
            ``layer_indices``, so it is read from ``layers``: one more low-res backbone pass).

    Runs the backbone itself (1 + u^2 passes at H x W in one batch). Before training or use,
    PHI-S must be fitted (:meth:`calibrate` on backbone features, then :meth:`finish_calibration`);
    a loaded weight file carries the fitted statistics.
    """

    needs_image = True
    uses_image_hr = True  # the tiles are cut from the real pixels
    calls_backbone = True

    def __init__(self, spec: BackboneSpec, factor: int = 2, window: int = 7, num_heads: int = 16,
                 debias_hw: Sequence[int] = (32, 32), spectral_reparam: bool = False, flex_attention: bool = False,
                 zero_start: bool = False):
        if int(factor) != factor or factor < 2:
            raise ValueError(f"FeatSharp: factor must be an integer >= 2, got {factor!r}")
        dim = spec.embed_dim
        debias_hw = [int(v) for v in debias_hw]
        if len(debias_hw) != 2 or min(debias_hw) < 1:
            raise ValueError(f"debias_hw must be two positive integers, got {debias_hw}")
        # zero start: the base enlarges the last layer, which the method reads from ``layers`` then
        super().__init__(spec, factor, (spec.depth - 1,) if zero_start else (), window=int(window),
                         num_heads=int(num_heads), debias_hw=debias_hw, spectral_reparam=bool(spectral_reparam),
                         flex_attention=bool(flex_attention), zero_start=bool(zero_start))
        u = self.factor
        self.debias = nn.Parameter(torch.zeros(1, dim, *debias_hw))
        self.phi_s = PhiS(dim)
        self.jbu = FeatSharpJBUStack(dim, u)
        self.tile_pos = nn.Parameter(torch.zeros(1, dim, u, u))
        self.block = FusionBlock(dim, int(num_heads), int(window), flex_attention=bool(flex_attention))
        if self.zero_start:
            self.detail = DetailGate(dim)
        if spectral_reparam:
            self.block.attn.qkv = spectral_reparametrize(self.block.attn.qkv, chunks=3)
            self.block.attn.proj = spectral_reparametrize(self.block.attn.proj)
            self.block.mlp.w12 = spectral_reparametrize(self.block.mlp.w12, chunks=2)
            self.block.mlp.w3 = spectral_reparametrize(self.block.mlp.w3)

    # -- pieces (also used by the distillation objective) ------------------------------------
    def views(self, image: torch.Tensor, image_hr: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(low-res view (B,3,H,W), the picture at (B,3,uH,uW)) for the working image ``image``
        and the user's picture ``image_hr`` (see the module docstring, step 1)."""
        hw = tuple(image.shape[-2:])
        big_hw = (self.factor * hw[0], self.factor * hw[1])
        if image_hr is None or tuple(image_hr.shape[-2:]) == hw:  # no pixels beyond the working image
            return image, resize(image if image_hr is None else image_hr, big_hw)
        big = image_hr if tuple(image_hr.shape[-2:]) == big_hw else resize(image_hr, big_hw)
        return low_res_view(big, hw), big

    def tiles(self, big: torch.Tensor) -> torch.Tensor:
        """(B,3,uH,uW) -> (u*u*B, 3, H, W): non-overlapping crops, tile-major (index ((ty*u + tx)*B + b))."""
        b, c, hh, ww = big.shape
        u = self.factor
        h, w = hh // u, ww // u
        return big.view(b, c, u, h, u, w).permute(2, 4, 0, 1, 3, 5).reshape(u * u * b, c, h, w)

    def stitch(self, tile_maps: torch.Tensor, batch: int) -> torch.Tensor:
        """(u*u*B, C, h, w) tile-major -> (B, C, u*h, u*w)."""
        u = self.factor
        _, c, h, w = tile_maps.shape
        return tile_maps.view(u, u, batch, c, h, w).permute(2, 3, 0, 4, 1, 5).reshape(batch, c, u * h, u * w)

    def debias_map(self, hw: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The de-bias map (1, C, *hw): ``debias`` resized bilinearly to the grid ``hw``."""
        d = self.debias
        if tuple(hw) != tuple(d.shape[-2:]):
            shrink = hw[0] < d.shape[-2] or hw[1] < d.shape[-1]
            d = F.interpolate(d, size=tuple(hw), mode="bilinear", align_corners=False, antialias=shrink)
        return d.to(dtype)

    def normalised(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone maps (N, C, h, w) -> PHI-S(feats) + de-bias: the space the block works in."""
        return self.phi_s(feats) + self.debias_map(tuple(feats.shape[-2:]), feats.dtype)

    def target_transform(self, feats: torch.Tensor) -> torch.Tensor:
        """The teacher's maps (N, C, h, w) in the space of the output: de-biased like the inputs
        (``inverse(PHI-S(feats) + debias)``), so the learned de-bias trains through the target too."""
        return self.phi_s.inverse(self.normalised(feats))

    def tile_embedding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """``tile_pos`` (1, C, u, u) repeated over each h x w tile: (1, C, u*h, u*w)."""
        return self.tile_pos.to(dtype).repeat_interleave(h, dim=2).repeat_interleave(w, dim=3)

    def guidance(self, big: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
        """The picture resized to the output grid, bilinear without antialiasing as the release
        resizes it (its JBU was trained on that sampling of the pixels): the JBU's guidance."""
        return F.interpolate(big, size=tuple(out_hw), mode="bilinear", align_corners=False)

    # -- forward -----------------------------------------------------------------------------
    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: Optional[torch.Tensor],
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        if backbone is None:
            raise ValueError("featsharp runs the backbone on its tiles: pass backbone= (DenseFeaturizer does)")
        if not self.calibrated:
            raise RuntimeError(
                "FeatSharp's PHI-S normaliser is not fitted: call calibrate(backbone.last_layer_map(x)) on "
                "a few batches of images, then finish_calibration() (the distillation tool does this), or load a "
                "trained FeatSharp weight file")
        b = image.shape[0]
        low, big = self.views(image, image_hr)
        feats = self.normalised(backbone.last_layer_map(torch.cat([low, self.tiles(big)], dim=0)))
        lo, tile_maps = feats[:b], feats[b:]
        h, w = lo.shape[-2:]
        out_hw = (self.factor * h, self.factor * w)
        hi = self.jbu(lo, self.guidance(big, out_hw).to(lo.dtype))
        tiled = self.stitch(tile_maps, b) + self.tile_embedding(h, w, feats.dtype)
        x = self.block(torch.cat([hi, tiled], dim=1).permute(0, 2, 3, 1))
        out = self.phi_s.inverse(x.permute(0, 3, 1, 2).contiguous())
        # zero start: a per-channel share of what FeatSharp changes, starting at none
        return out if base is None else self.detail(out - base.to(out.dtype))

    # -- export and the authors' checkpoints ---------------------------------------------------
    def for_export(self) -> "FeatSharp":
        """This upsampler as weight files hold it: a copy with the spectral reparametrisation
        baked into plain weights (``spectral_reparam=False``); ``self`` if there is none."""
        if not self.config["spectral_reparam"]:
            return self
        plain = FeatSharp(self.spec, **dict(self.config, spectral_reparam=False))
        plain.load_state_dict(bake_spectral_state_dict(self.state_dict()))
        return plain.to(self.debias.device).train(self.training)

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """Map a checkpoint of the authors' training script (its ``model_state``) to our keys.

        Supported: the code-default JBU + LayerNorm FeatSharp with one fusion level,
        ``upsampler.[module.]ups.0.{tile_pos, jbu.ups.i.*, block.*}``, ``normalizer.{mean, alpha,
        rotation, inv_rotation}`` (PHI-S) and ``bias_buffer.[module.]buffer`` (the de-bias map,
        whose grid replaces ``debias_hw``), with or without a leading DDP ``module.``; weights
        spectrally reparametrised by the release (``parametrizations.weight.original`` and
        ``parametrizations.weight.0.[parts.i.]{sn_scale, _u, _v, _sn_version}``) are baked. Refused
        with a :class:`WeightFileError` naming it: the shipped configs' JAFAR-input / no-LayerNorm
        variant (``featsharp.no-ln.inputs-jafar-tiles``), and anything else that does not fit.
        """
        if "model_state" in sd and isinstance(sd["model_state"], Mapping):
            sd = sd["model_state"]
        sd = {k.replace(".module.", ".").removeprefix("module."): v for k, v in sd.items()
              if isinstance(v, torch.Tensor)}
        try:
            sd = bake_spectral_state_dict(sd)
        except SpectralStateError as e:
            raise WeightFileError(f"{source} is not a FeatSharp checkpoint this loader reads: {e}") from e
        level = "upsampler.ups.0."
        ups = {k[len(level):]: v for k, v in sd.items() if k.startswith(level)}
        if not ups:
            raise WeightFileError(f"{source} is not a FeatSharp training checkpoint: no '{level}*' keys among "
                                  f"{sorted(sd)[:6]}")
        if any("jafar" in k for k in ups) or not any(k.startswith("jbu.") for k in ups):
            raise WeightFileError(
                f"{source} holds the JAFAR-input FeatSharp variant (featsharp.no-ln.inputs-jafar-tiles, the "
                f"authors' shipped configs); only the code-default JBU + LayerNorm variant maps onto this "
                f"FeatSharp (keys: {sorted(ups)[:8]})")
        if "block.norm1.weight" not in ups:
            raise WeightFileError(
                f"{source} holds a FeatSharp block without LayerNorm (the 'no-ln' variant of the authors' "
                f"shipped configs, featsharp.no-ln.*); only the code-default JBU + LayerNorm variant is supported")
        if any(k.startswith("upsampler.ups.") and not k.startswith(level) for k in sd):
            raise WeightFileError(f"{source} has more than one FeatSharp fusion level (upsampler.ups.1...); "
                                  f"only single-level checkpoints are supported")
        tile_pos = ups.get("tile_pos")
        if tile_pos is None or tuple(tile_pos.shape) != (1, self.embed_dim, self.factor, self.factor):
            got = None if tile_pos is None else tuple(tile_pos.shape)
            raise WeightFileError(f"{source}: tile_pos {got} does not fit FeatSharp with factor {self.factor} "
                                  f"for C={self.embed_dim} (expected (1, {self.embed_dim}, {self.factor}, "
                                  f"{self.factor}))")
        bias = [v for k, v in sd.items() if k in ("bias_buffer.buffer", "bias_buffer.module.buffer")]
        if len(bias) != 1:
            raise WeightFileError(f"{source}: no de-bias map 'bias_buffer.buffer'")
        out = dict(ups)
        out["debias"] = bias[0]
        for name in ("mean", "alpha", "rotation", "inv_rotation"):
            if f"normalizer.{name}" not in sd:
                raise WeightFileError(f"{source}: no PHI-S statistics 'normalizer.{name}' (a FeatSharp trained "
                                      f"without the PHI-S normaliser is not supported)")
            out[f"phi_s.{name}"] = sd[f"normalizer.{name}"].reshape(self.phi_s.state_dict()[name].shape)
        out["phi_s.fitted"] = torch.ones((), dtype=torch.bool)
        grid = tuple(int(s) for s in bias[0].shape[-2:])
        if grid != tuple(self.debias.shape[-2:]) and bias[0].shape[:2] == self.debias.shape[:2]:
            self.debias = nn.Parameter(torch.zeros(1, self.embed_dim, *grid, device=self.debias.device))
            self.config["debias_hw"] = list(grid)
        if self.config["spectral_reparam"]:
            bake_spectral_reparam(self)
            self.config["spectral_reparam"] = False
        return out
