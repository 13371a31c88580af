"""AnyUp (Wimmer et al., ICLR 2026) as released: a feature-agnostic upsampler trained once, applied
to any backbone layer of any width C, at any output size, with no training per backbone.

For an image (B, 3, H, W) (ImageNet-normalised, any size), a feature map (B, C, h, w) (any C and
grid) and an output size (H', W'), the release's paper model (its non-NATTEN path):

1. Image encoding at the image's full resolution: 1x1 conv 3 -> 128 and two ResBlocks
   (GroupNorm(8) - SiLU - 1x1 conv, twice, plus the input), then RoPE with the learned
   frequencies ``rope.freqs`` (2, 128) on (row, column) in [0, 1], both ends inclusive:
   ``x cos(a) + rot(x) sin(a)``, ``rot(x) = [-x[64:], x[:64]]``, ``a = r * freqs[0] + c * freqs[1]``.
2. Queries: the query encoder (1x1 conv + 2 ResBlocks) of the encoding, adaptive-average-pooled
   to (H', W'), a 3x3 conv (zero padding), RMSNorm and the query projection.
3. Keys: the key encoder of the encoding pooled to (h, w), concatenated with the learned feature
   unification (LFU) of the L2-normalised features, then the aggregation encoder (3x3 conv 256 ->
   128, reflect padding, + 2 ResBlocks), RMSNorm and the key projection.
4. Windowed attention, 4 heads of 32: a query at pixel centre (y, x) in [0, 1] sees the key rows
   ``[floor(clip(y - r) h), ceil(clip(y + r) h))`` and likewise columns (r = ``window_ratio``,
   0.1; 0 = global); the softmax weights are averaged over the heads and applied to the RAW
   features: the output is a per-pixel convex combination of the input vectors, in their space.

The LFU as the code (not the paper) computes it, which is what the checkpoints were trained with:
each channel convolved with each of the 128 5x5 basis filters (zero padding, divided by the taps
inside the map), the (B, C*128, h, w) result viewed as (B, 128, C, h, w), softmax over dim 1 and
the mean over dim 2.

Memory grows with the output, not with output x keys: queries are processed in tiles of at most
``q_chunk_size`` output pixels, each attending only to the keys its window can reach (the
release's mask, restricted to them: the same output); image-resolution encoder maps larger than
``stream_bytes`` are computed in bands of rows, in place, their GroupNorm statistics gathered over
the whole map first. The released checkpoints' value and output projections of the attention
never reach the output (only its head-averaged weights do): :func:`checkpoint_filter_fn` checks
them and drops them, so this module holds 845,056 of the release's 878,080 parameters.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from .base import DetailGate, Upsampler, register_upsampler
from .layers.banded import residual_banded_
from .layers.layout import pointwise

__all__ = ["AnyUp", "checkpoint_filter_fn", "release_shapes"]

# the paper model (config/model/anyup.yaml); the released checkpoints are built with these
QK_DIM, NUM_HEADS, LFU_KERNEL, GROUPS = 128, 4, 5, 8


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` with 1x1 convolutions (the release's keys block.0-5)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(GROUPS, dim), nn.SiLU(), nn.Conv2d(dim, dim, 1, bias=False),
                                   nn.GroupNorm(GROUPS, dim), nn.SiLU(), nn.Conv2d(dim, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn1, _, conv1, gn2, _, conv2 = self.block
        return x + pointwise(conv2, F.silu(gn2(pointwise(conv1, F.silu(gn1(x))))))

    def forward_banded_(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """The same, in place on ``x`` (B, C, H, W), ``rows`` rows at a time: the statistics of each
        GroupNorm are gathered over the whole map first (the inner map is computed twice rather than
        stored), so no second full-size map is ever held."""
        gn1, _, conv1, gn2, _, conv2 = self.block
        return residual_banded_(x, rows, gn1, conv1, gn2, conv2)


class FeatureUnification(nn.Module):
    """The release's learned feature unification: (B, C, h, w), any C -> (B, M, h, w), summing to 1
    over M (see the module docstring for the code-vs-paper reshape it reproduces)."""

    def __init__(self, out_channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.basis = nn.Parameter(torch.randn(out_channels, 1, kernel_size, kernel_size))

    # its (B, C*M, h, w) intermediate is computed in bands of rows of at most this many bytes
    # (C=384 on a 128x128 grid: 3 GB at once, several times over)
    band_bytes: int = 64 << 20

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        m, k = self.basis.shape[0], self.kernel_size
        p = k // 2
        inside = F.conv2d(feats.new_ones(1, 1, h, w), feats.new_ones(1, 1, k, k), padding=p)  # taps in the map
        rows = max(1, self.band_bytes // (b * c * m * w * feats.element_size()))
        out = []
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            top, bottom = max(0, r0 - p), min(h, r1 + p)  # the rows the 5x5 filters reach, zeros beyond the map
            band = F.pad(feats[:, :, top:bottom], (p, p, p - (r0 - top), p - (bottom - r1)))
            per_channel = F.conv2d(band.reshape(b * c, 1, *band.shape[-2:]), self.basis.to(feats.dtype))
            # flat channel index c*M + j, viewed as (M, C): what the checkpoints were trained with
            x = (per_channel / inside[:, :, r0:r1]).reshape(b, m, c, r1 - r0, w)
            out.append(x.softmax(dim=1).mean(dim=2))
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)


class RMSNorm(nn.Module):
    """torch's RMSNorm with ``eps=None`` (the dtype's machine epsilon), over the last dim."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), eps=torch.finfo(x.dtype).eps)


def first_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An encoder's first layer on ``x``: a 1x1 convolution as the matrix product it is."""
    return pointwise(layer, x) if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) else layer(x)


def run_encoder(enc: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return enc[2](enc[1](first_layer(enc[0], x)))


def encoder(in_ch: int, first_kernel: int = 1, first: Optional[nn.Module] = None, dim: int = QK_DIM) -> nn.Sequential:
    """The release's ``_make_encoder``: a first layer (a bias-free conv, reflect padding) and 2 ResBlocks."""
    if first is None:
        first = nn.Conv2d(in_ch, dim, first_kernel, padding=first_kernel // 2, padding_mode="reflect", bias=False)
    return nn.Sequential(first, ResBlock(dim), ResBlock(dim))


def window_bounds(n_out: int, n_in: int, ratio: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each of ``n_out`` output rows (or columns), the first and one-past-last token row of its
    window on an ``n_in`` grid: pixel centres ``(i + 0.5) / n_out`` +- ``ratio``, clipped to [0, 1],
    floor / ceil; float32 as the release computes them (their rounding decides the borders)."""
    centre = (torch.arange(n_out, dtype=torch.float32) + 0.5) / n_out
    lo = ((centre - ratio).clamp(0.0, 1.0) * n_in).floor().long()
    hi = ((centre + ratio).clamp(0.0, 1.0) * n_in).ceil().long()
    return lo, hi


def release_shapes(qk: int = QK_DIM) -> Dict[str, Tuple[int, ...]]:
    """Every key of the released AnyUp state dict (paper and multi-backbone checkpoints) and its shape."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    firsts = {"image_encoder": (qk, 3, 1, 1), "key_encoder": (qk, qk, 1, 1), "query_encoder": (qk, qk, 1, 1),
              "key_features_encoder": (qk, 1, LFU_KERNEL, LFU_KERNEL), "aggregation": (qk, 2 * qk, 3, 3)}
    for name, first in firsts.items():
        shapes[f"{name}.0.{'basis' if name == 'key_features_encoder' else 'weight'}"] = first
        for i in (1, 2):
            for j in (0, 3):
                shapes[f"{name}.{i}.block.{j}.weight"] = shapes[f"{name}.{i}.block.{j}.bias"] = (qk,)
            for j in (2, 5):
                shapes[f"{name}.{i}.block.{j}.weight"] = (qk, qk, 1, 1)
    att = "cross_decode.cross_attn."
    shapes.update({"cross_decode.conv2d.weight": (qk, qk, 3, 3), att + "norm_q.weight": (qk,),
                   att + "norm_k.weight": (qk,), att + "attention.in_proj_weight": (3 * qk, qk),
                   att + "attention.in_proj_bias": (3 * qk,), att + "attention.out_proj.weight": (qk, qk),
                   att + "attention.out_proj.bias": (qk,), "rope.freqs": (2, qk)})
    return shapes


# release key -> ours, for the keys whose name changes (the rest keep the release's names)
_RENAMED = {"cross_decode.conv2d.weight": "query_conv.weight",
            "cross_decode.cross_attn.norm_q.weight": "norm_q.weight",
            "cross_decode.cross_attn.norm_k.weight": "norm_k.weight"}
_IN_PROJ = "cross_decode.cross_attn.attention.in_proj_"


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: Optional["AnyUp"] = None,
                         source: str = "state dict") -> Dict[str, torch.Tensor]:
    """The authors' AnyUp state dict (``anyup_paper.pth``, ``anyup_multi_backbone.pth``: the flat
    state dict of ``AnyUp()``, 73 keys) in this module's keys (timm-style, beside the model): every
    key must be there with the release's shape; the attention's value and output projections, which
    never reach the output, are dropped; anything else is refused with a :class:`WeightFileError`
    naming the key."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    expected = release_shapes()
    unknown = sorted(set(sd) - set(expected))
    missing = sorted(set(expected) - set(sd))
    wrong = [f"{k} {tuple(sd[k].shape)} (release: {s})" for k, s in expected.items()
             if k in sd and tuple(sd[k].shape) != s]
    if unknown or missing or wrong:
        hint = " (a training checkpoint? pass its 'anyup' state dict)" if "anyup" in sd else ""
        raise WeightFileError(
            f"{source} is not the released AnyUp layout{hint}: "
            + "; ".join(p for p in (f"unknown keys {unknown[:4]}" if unknown else "",
                                    f"missing keys {missing[:4]}" if missing else "",
                                    f"wrong shapes {wrong[:3]}" if wrong else "") if p))
    out = {}
    for k, v in sd.items():
        if k.startswith(_IN_PROJ):  # rows [q; k; v]: the value rows are dead
            out["qk_proj." + k[len(_IN_PROJ):]] = v[:2 * QK_DIM]
        elif not k.startswith("cross_decode.cross_attn.attention.out_proj"):
            out[_RENAMED.get(k, k)] = v
    return out


@register_upsampler("anyup")
class AnyUp(Upsampler):
    """AnyUp on one backbone layer (the last by default): ``image (B,3,H,W), {layer: (B,C,h,w)} ->
    (B, C, H', W')`` with (H', W') = ``output_size`` (any) or, without one, ``factor`` x (h, w).

    Args:
        spec: the backbone (AnyUp itself is channel-agnostic: any C, any layer, no training per backbone).
        factor: the output's size without ``output_size``: ``factor`` x the token grid (default 4,
            stride 4 like BRIXEL; the release's own default is the image size, ``output_size=image``
            or ``factor=16`` here).
        layer: the backbone layer it upsamples (negative counts from the end; default the last).
        window_ratio: the attention window, +- this fraction of the image (release 0.1; 0 = global).
        q_chunk_size: output pixels per attention tile (memory ~ q_chunk_size x the window's keys x
            4 heads x 4 bytes x ~3); None: one tile, the release's all-at-once computation.
        zero_start: a new training's start at bilinear interpolation (a :class:`DetailGate` on the
            difference); off for the authors' weights.

    It reads its pixels from ``image_hr`` when given (the encoder runs at that image's resolution).
    Parameters: 845,056 (the release's 878,080 minus 33,024 dead ones, see the module docstring).
    """

    needs_image = True
    uses_image_hr = True
    any_output_size = True
    # image-resolution encoder maps above this many bytes are computed in bands, in place
    stream_bytes: int = 256 << 20

    def __init__(self, spec: BackboneSpec, factor: int = 4, layer: int = -1, window_ratio: float = 0.1,
                 q_chunk_size: Optional[int] = 4096, zero_start: bool = False):
        if not -spec.depth <= int(layer) < spec.depth:
            raise ValueError(f"AnyUp: layer {layer} does not exist in a depth-{spec.depth} backbone")
        if not 0 <= float(window_ratio) < 1:
            raise ValueError(f"AnyUp: window_ratio must be in [0, 1), got {window_ratio!r}")
        if q_chunk_size is not None and (int(q_chunk_size) != q_chunk_size or q_chunk_size < 1):
            raise ValueError(f"AnyUp: q_chunk_size must be a positive integer or None, got {q_chunk_size!r}")
        layer = int(layer) % spec.depth
        super().__init__(spec, factor, (layer,), layer=layer, window_ratio=float(window_ratio),
                         q_chunk_size=q_chunk_size, zero_start=bool(zero_start))
        self.window_ratio, self.q_chunk_size = float(window_ratio), q_chunk_size
        qk = QK_DIM
        self.image_encoder = encoder(3)
        self.key_encoder = encoder(qk)
        self.query_encoder = encoder(qk)
        self.key_features_encoder = encoder(qk, first=FeatureUnification(qk, LFU_KERNEL))
        self.aggregation = encoder(2 * qk, first_kernel=3)
        self.rope = nn.Module()
        self.rope.freqs = nn.Parameter(rope_init(qk))
        self.query_conv = nn.Conv2d(qk, qk, 3, padding=1, bias=False)
        self.norm_q, self.norm_k = RMSNorm(qk), RMSNorm(qk)
        self.qk_proj = nn.Linear(qk, 2 * qk)  # the release's in_proj rows of q and k
        nn.init.xavier_uniform_(self.qk_proj.weight)
        nn.init.zeros_(self.qk_proj.bias)
        self.gate = DetailGate(spec.embed_dim) if self.zero_start else None

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        if self.zero_start:
            raise WeightFileError(f"{source}: the authors' AnyUp has no zero start; build it with zero_start=False")
        return checkpoint_filter_fn(sd, self, source)

    # -- the release's computation ------------------------------------------------------------------
    def apply_rope(self, x: torch.Tensor, row0: int, height: int) -> torch.Tensor:
        """RoPE on ``x``, rows ``row0..`` of an encoding (B, 128, height, W) in total."""
        b, c, r, w = x.shape
        freqs = self.rope.freqs.to(x.dtype)
        rows = torch.linspace(0, 1, height, dtype=x.dtype, device=x.device)[row0:row0 + r]
        cols = torch.linspace(0, 1, w, dtype=x.dtype, device=x.device)
        angle = rows.view(r, 1, 1) * freqs[0] + cols.view(1, w, 1) * freqs[1]  # (r, W, 128)
        angle = angle.permute(2, 0, 1)
        half = c // 2
        rotated = torch.cat([-x[:, half:], x[:, :half]], dim=1)
        return torch.addcmul(x * angle.cos(), rotated, angle.sin())

    def encodings(self, image: torch.Tensor, out_hw: Tuple[int, int], grid: Tuple[int, int]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The query map (B, 128, H', W') before its 3x3 conv and the pooled key encoding (B, 128, h, w)."""
        b, _, hh, ww = image.shape
        qk = QK_DIM
        # bands are in place: for inference (no autograd) on maps too large to hold several of
        if torch.is_grad_enabled() or b * qk * hh * ww * image.element_size() <= self.stream_bytes:
            enc = self.apply_rope(run_encoder(self.image_encoder, image), 0, hh)
            keys = F.adaptive_avg_pool2d(run_encoder(self.key_encoder, enc), grid)
            return F.adaptive_avg_pool2d(run_encoder(self.query_encoder, enc), out_hw), keys
        # in bands, in place: one image-resolution map at a time (the encoding is computed twice
        # rather than stored twice: the key and the query encoders both start from it)
        rows = max(1, self.stream_bytes // (8 * b * qk * ww * image.element_size()))
        # channels-last: a band of rows is one block of memory
        buf = torch.empty(b, qk, hh, ww, dtype=image.dtype, device=image.device, memory_format=torch.channels_last)
        maps = []
        for enc in (self.key_encoder, self.query_encoder):
            first = self.image_encoder[0]
            for r in range(0, hh, rows):
                buf[:, :, r:r + rows] = first_layer(first, image[:, :, r:r + rows])
            for block in self.image_encoder[1:]:
                block.forward_banded_(buf, rows)
            for r in range(0, hh, rows):
                buf[:, :, r:r + rows] = self.apply_rope(buf[:, :, r:r + rows], r, hh)
            for r in range(0, hh, rows):
                buf[:, :, r:r + rows] = first_layer(enc[0], buf[:, :, r:r + rows])
            for block in enc[1:]:
                block.forward_banded_(buf, rows)
            size = grid if enc is self.key_encoder else out_hw
            # pooling to the map's own size is the identity: no second image-size map
            last = enc is self.query_encoder
            maps.append(buf if last and size == (hh, ww) else F.adaptive_avg_pool2d(buf, size))
        keys, queries = maps
        return queries, keys

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The windowed cross-attention of ``queries`` (B, 128, H', W') over the key map (B, 128, h, w),
        values the raw ``feats`` (B, C, h, w): (B, C, H', W'), in tiles of at most ``q_chunk_size``."""
        b, qk, oh, ow = queries.shape
        c, h, w = feats.shape[1:]
        heads, d = NUM_HEADS, qk // NUM_HEADS
        wq, wk = self.qk_proj.weight[:qk], self.qk_proj.weight[qk:]
        bq, bk = self.qk_proj.bias[:qk], self.qk_proj.bias[qk:]
        k = F.linear(self.norm_k(keys.flatten(2).transpose(1, 2)), wk, bk)  # (B, hw, 128)
        k = k.view(b, h, w, heads, d)
        v = feats.permute(0, 2, 3, 1)  # (B, h, w, C)
        rlo, rhi = window_bounds(oh, h, self.window_ratio)
        clo, chi = window_bounds(ow, w, self.window_ratio)
        out = feats.new_empty(b, oh, ow, c)
        th, tw = self.tile(oh, ow)
        scale = d ** -0.5
        for i0 in range(0, oh, th):
            i1 = min(oh, i0 + th)
            # the 3x3 conv of these rows needs one row either side (zeros outside the map)
            top, bottom = max(0, i0 - 1), min(oh, i1 + 1)
            band = F.pad(queries[:, :, top:bottom], (0, 0, 1 - (i0 - top), 1 - (bottom - i1)))
            band = F.conv2d(band, self.query_conv.weight, padding=(0, 1))  # (B, 128, i1-i0, W')
            q = F.linear(self.norm_q(band.permute(0, 2, 3, 1)), wq, bq)  # (B, rows, W', 128)
            for j0 in range(0, ow, tw):
                j1 = min(ow, j0 + tw)
                r0, r1, c0, c1 = self.key_box(rlo[i0:i1], rhi[i0:i1], clo[j0:j1], chi[j0:j1], h, w)
                qt = q[:, :, j0:j1].reshape(b, -1, heads, d).transpose(1, 2)  # (B, heads, n, d)
                kt = k[:, r0:r1, c0:c1].reshape(b, -1, heads, d).transpose(1, 2)  # (B, heads, m, d)
                logits = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale)
                if self.window_ratio > 0:
                    rows = torch.arange(r0, r1)
                    cols = torch.arange(c0, c1)
                    row_ok = (rows >= rlo[i0:i1, None]) & (rows < rhi[i0:i1, None])  # (n_rows, m_rows)
                    col_ok = (cols >= clo[j0:j1, None]) & (cols < chi[j0:j1, None])
                    allowed = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(
                        (i1 - i0) * (j1 - j0), (r1 - r0) * (c1 - c0))
                    logits.masked_fill_(~allowed.to(logits.device), float("-inf"))
                weights = logits.softmax(dim=-1).mean(dim=1)  # heads averaged, (B, n, m)
                tile = torch.bmm(weights, v[:, r0:r1, c0:c1].reshape(b, -1, c))
                out[:, i0:i1, j0:j1] = tile.view(b, i1 - i0, j1 - j0, c)
        return out.permute(0, 3, 1, 2)

    def tile(self, oh: int, ow: int) -> Tuple[int, int]:
        """Rows and columns of one query tile: all of them without ``q_chunk_size``, else a tile of at
        most that many pixels, as square as the output allows (a square's window holds the fewest keys)."""
        if self.q_chunk_size is None or oh * ow <= self.q_chunk_size:
            return oh, ow
        side = max(1, math.isqrt(self.q_chunk_size))
        tw = min(ow, side)
        return max(1, min(oh, self.q_chunk_size // tw)), tw

    def key_box(self, rlo, rhi, clo, chi, h: int, w: int) -> Tuple[int, int, int, int]:
        """The token rows [r0, r1) and columns [c0, c1) the windows of a tile reach (all without a window)."""
        if self.window_ratio <= 0:
            return 0, h, 0, w
        return int(rlo.min()), int(rhi.max()), int(clo.min()), int(chi.max())

    def upsample(self, image: torch.Tensor, feats: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
        """The release's ``AnyUp.forward(image, feats, output_size)``: (B, C, *output_size)."""
        if image.shape[0] != feats.shape[0]:
            raise ValueError(f"AnyUp: {image.shape[0]} images for {feats.shape[0]} feature maps")
        grid = tuple(feats.shape[-2:])
        queries, keys = self.encodings(image, tuple(output_size), grid)
        unified = run_encoder(self.key_features_encoder, F.normalize(feats, dim=1))
        keys = run_encoder(self.aggregation, torch.cat([keys, unified], dim=1))
        return self.attend(queries, keys, feats)

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: torch.Tensor,
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None,
                   output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        out = self.upsample(self.pixels(image, image_hr), source, output_size)
        return out if base is None else self.gate(out - base)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", window_ratio={self.window_ratio:g}, q_chunk_size={self.q_chunk_size}"


def rope_init(dim: int) -> torch.Tensor:
    """The release's initial RoPE frequencies (2, dim): ``2 pi 100^-linspace(0, 1, dim/4)``, twice,
    rows in the first half of channels, columns in the second."""
    f = 100.0 ** -torch.linspace(0, 1, dim // 4)
    f = torch.cat([f, f])
    freqs = torch.zeros(2, dim)
    freqs[0, :dim // 2] = f
    freqs[1, dim // 2:] = f
    return freqs * 2 * torch.pi
