"""JAFAR (Couairon et al., NeurIPS 2025): global image-guided attention from pixels to tokens, at any
output size. The output is a per-pixel convex combination of the raw input feature vectors.

Data flow (``qk`` = 128, 4 heads of 32; C = feature dim; (h, w) token grid; (H, W) image; (H', W')
the output size, anything)::

    image (B,3,H,W) --image_encoder: conv k (reflect) + 2 ResBlocks--> e (B,qk,H,W) --RoPE--> e
    e --query_encoder--> adaptive_avg_pool (H',W') --GroupNorm(8, no affine)--> conv3x3 (zeros) --> q
    e --key_encoder--> adaptive_avg_pool (h,w) --GroupNorm(8, no affine)--> * gamma(kf) + beta(kf) --> k
        with kf = key_features_encoder(L2-normalised feats) (B,qk,h,w)       (the release's SFT)
    RMSNorm(q), RMSNorm(k) -> per head softmax(q Wq (k Wk)^T / sqrt(32)), averaged over the heads
    -> A (B, H'W', hw) -> A @ feats -> (B,C,H',W')

What we compute differently from the release (same numbers): the release runs
``nn.MultiheadAttention`` with ``need_weights=True``, which materialises A for all queries at
once ((B*4, H'W', hw) floats: 3.3 GB at 448x448 from 32x32 tokens) and computes a value path
(``norm_v``, ``v_proj_weight``, the v third of ``in_proj_bias``, ``out_proj``: 66,176 parameters
at C=384) whose result it throws away. Here the queries run in chunks (:attr:`JafarCore.query_chunk`),
so memory grows with the output, not with output x keys; at inference, full-resolution 128-channel
maps above :attr:`JafarCore.stream_bytes` are computed in bands of rows (the image-size encoders in
place in one buffer, their GroupNorm statistics gathered over the whole map first, the encoding
computed twice rather than held twice; the output-size query path band by band with the row of
halo its 3x3 convolution needs), the same numbers to float rounding. The value path is not built:
:func:`checkpoint_filter_fn` checks that the released file holds it with the release's shapes
and drops it, as timm's filter functions do. The release creates its RoPE coordinates on CUDA
(``create_coordinate(device="cuda")``); here they are made on the input's device, so CPU works.

Parameters: 562,304 at C=384 (the release's 628,480 minus the 66,176 dead ones); 65 released keys.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from .base import CoreUpsampler, register_upsampler
from .layers.banded import group_norm_with, group_stats, residual_banded_
from .layers.layout import channels_last, pointwise
from .release_files import read_release_file

QK_DIM = 128
# attention weights held at once per chunk of queries (B * heads * chunk * keys floats: 64 MB fp32)
ATTENTION_BUDGET = 1 << 24


class ResBlock(nn.Module):
    """GN(8) -> SiLU -> conv 1x1 -> GN(8) -> SiLU -> conv 1x1, plus the input: (B,d,H,W) -> (B,d,H,W).
    Keys ``norm1, conv1, norm2, conv2`` as released."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, dim)
        self.conv2 = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pointwise(self.conv1, F.silu(self.norm1(x)))
        return x + pointwise(self.conv2, F.silu(self.norm2(y)))

    def forward_banded_(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """The same, in place, ``rows`` rows at a time (GroupNorm statistics over the whole map)."""
        return residual_banded_(x, rows, self.norm1, self.conv1, self.norm2, self.conv2)


class Encoder(nn.Sequential):
    """conv k x k (reflect padding, no bias) cin -> 128, then 2 ResBlocks: keys ``0``, ``1.*``, ``2.*``.
    (B,cin,H,W) -> (B,128,H,W) channels-last (on CPU its 1x1 convolutions run as matrix products,
    half the time of oneDNN's; the full-resolution encoders are most of JAFAR's time)."""

    def __init__(self, cin: int, kernel_size: int = 1):
        # a 1x1 convolution pads nothing: zeros mode avoids the reflect mode's copy of the input
        conv = nn.Conv2d(cin, QK_DIM, kernel_size, padding=kernel_size // 2,
                         padding_mode="reflect" if kernel_size > 1 else "zeros", bias=False)
        super().__init__(conv, ResBlock(QK_DIM), ResBlock(QK_DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x)
        x = pointwise(self[0], x) if self[0].kernel_size == (1, 1) else self[0](x)
        return self[2](self[1](x))

    def first_band(self, x: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """The first convolution's rows ``r0:r1`` of ``x`` (B, cin, H, W): the rows its kernel reaches,
        reflected at the map's borders as its padding is."""
        conv = self[0]
        p = conv.kernel_size[0] // 2
        if p == 0:
            return pointwise(conv, x[:, :, r0:r1])
        h = x.shape[-2]
        idx = torch.arange(r0 - p, r1 + p, device=x.device).abs()
        idx = torch.where(idx > h - 1, 2 * (h - 1) - idx, idx)
        band = F.pad(x.index_select(2, idx), (p, p, 0, 0), mode="reflect")
        return F.conv2d(band, conv.weight)

    def forward_banded_(self, x: torch.Tensor, buf: torch.Tensor, rows: int) -> torch.Tensor:
        """``self(x)`` written into ``buf`` (B, 128, H, W), ``rows`` rows at a time; ``buf`` may be ``x``
        when the first convolution is 1x1 (each band is read before it is overwritten)."""
        for r in range(0, x.shape[-2], rows):
            buf[:, :, r:r + rows] = self.first_band(x, r, min(r + rows, x.shape[-2]))
        for block in (self[1], self[2]):
            block.forward_banded_(buf, rows)
        return buf


class RoPE(nn.Module):
    """The release's "RoPE" on the image encoding: a learned (2, 128) frequency table ``freqs``.
    ``(B,128,H,W) -> (B,128,H,W)``: ``x cos(a) + rot(x) sin(a)`` with ``a = r freqs[0] + c freqs[1]``,
    r, c = linspace(0, 1) over rows / columns (both ends included) and ``rot(x) = [-x[64:], x[:64]]``.
    Channel i is paired with i + 64 under different angles, so it is not a rotation: reproduced as is
    (the released weights depend on it)."""

    def __init__(self, dim: int = QK_DIM, theta: float = 100.0):
        super().__init__()
        f = theta ** -torch.linspace(0, 1, dim // 4)
        f = 2 * math.pi * torch.cat([f, f])
        freqs = torch.zeros(2, dim)
        freqs[0, : dim // 2] = f  # the release's initial table (rows on the first half, columns on the second)
        freqs[1, dim // 2:] = f
        self.freqs = nn.Parameter(freqs)

    def forward(self, x: torch.Tensor, row0: int = 0, height: Optional[int] = None) -> torch.Tensor:
        """``x`` holds rows ``row0..`` of a map ``height`` rows high (default: all of it)."""
        h, w = x.shape[-2:]
        r = torch.linspace(0, 1, h if height is None else height, device=x.device, dtype=self.freqs.dtype)
        r = r[row0:row0 + h]
        c = torch.linspace(0, 1, w, device=x.device, dtype=self.freqs.dtype)
        angle = (r[:, None, None] * self.freqs[0] + c[None, :, None] * self.freqs[1]).permute(2, 0, 1)  # (128,h,w)
        half = x.shape[1] // 2
        rot = torch.cat([-x[:, half:], x[:, :half]], dim=1)
        return x * angle.cos().to(x.dtype) + rot * angle.sin().to(x.dtype)


class JafarCore(nn.Module):
    """JAFAR as released, pure PyTorch, any device.

    ``forward(image (B,3,H,W), feats (B,C,h,w), output_size (H',W')) -> (B,C,H',W')``; ``image``
    normalised with the backbone's mean / std (ImageNet for DINOv3), any H, W, h, w, H', W'.

    Args:
        dim: C, the feature dim (the release's ``v_dim``).
        kernel_size: the image encoder's first convolution (1 in the released config).
        num_heads: attention heads over the 128 query/key channels (4 released).
        query_chunk: queries per attention chunk; None picks one from :data:`ATTENTION_BUDGET`.
    """

    # full-resolution maps above this many bytes are computed in bands of rows (inference only)
    stream_bytes: int = 256 << 20

    def __init__(self, dim: int, kernel_size: int = 1, num_heads: int = 4, query_chunk: Optional[int] = None):
        super().__init__()
        if QK_DIM % num_heads:
            raise ValueError(f"JAFAR: num_heads must divide {QK_DIM}, got {num_heads}")
        self.dim, self.num_heads, self.query_chunk = int(dim), int(num_heads), query_chunk
        self.image_encoder = Encoder(3, kernel_size)
        self.query_encoder = Encoder(QK_DIM)
        self.key_encoder = Encoder(QK_DIM)
        self.key_features_encoder = Encoder(dim)
        self.rope = RoPE(QK_DIM)
        self.sft_key = nn.ModuleDict(dict(gamma=nn.Conv2d(QK_DIM, QK_DIM, 1, bias=False),
                                          beta=nn.Conv2d(QK_DIM, QK_DIM, 1, bias=False)))
        self.query_conv = nn.Conv2d(QK_DIM, QK_DIM, 3, padding=1, bias=False)
        self.norm_q = nn.RMSNorm(QK_DIM)
        self.norm_k = nn.RMSNorm(QK_DIM)
        self.q_proj = nn.Linear(QK_DIM, QK_DIM)
        self.k_proj = nn.Linear(QK_DIM, QK_DIM)

    def heads(self, x: torch.Tensor, proj: nn.Linear, norm: nn.RMSNorm) -> torch.Tensor:
        """(B,128,a,b) map -> (B, heads, a*b, 32) projected tokens."""
        t = proj(norm(x.flatten(2).transpose(1, 2)))
        return t.view(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2)

    def chunk_size(self, batch: int, keys: int) -> int:
        if self.query_chunk is not None:
            return max(1, int(self.query_chunk))
        return max(1, ATTENTION_BUDGET // max(1, batch * self.num_heads * keys))

    def forward(self, image: torch.Tensor, feats: torch.Tensor, output_size: Tuple[int, int]) -> torch.Tensor:
        if feats.dim() != 4 or feats.shape[1] != self.dim:
            raise ValueError(f"JAFAR: feats must be (B, {self.dim}, h, w), got {tuple(feats.shape)}")
        if image.dim() != 4 or image.shape[:2] != (feats.shape[0], 3):
            raise ValueError(f"JAFAR: image must be (B={feats.shape[0]}, 3, H, W), got {tuple(image.shape)}")
        out_h, out_w = (int(s) for s in output_size)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"JAFAR: output_size must be positive, got {tuple(output_size)}")
        b, _, h, w = feats.shape
        q, k = self.encodings(image, (out_h, out_w), (h, w))
        kf = self.key_features_encoder(F.normalize(feats, dim=1))
        k = self.sft_key["gamma"](kf) * F.group_norm(k, 8) + self.sft_key["beta"](kf)
        k = self.heads(k, self.k_proj, self.norm_k)
        values = feats.flatten(2).transpose(1, 2).to(k.dtype)  # (B, hw, C): the raw features
        scale = k.shape[-1] ** -0.5
        out = values.new_empty(b, out_h * out_w, self.dim)
        step = self.chunk_size(b, h * w)
        for s0, qb in self.query_bands(q):
            n = qb.shape[2]
            for s in range(0, n, step):
                attn = torch.softmax((qb[:, :, s:s + step] * scale) @ k.transpose(-1, -2), dim=-1).mean(1)
                out[:, s0 + s:s0 + min(n, s + step)] = attn @ values
        return out.transpose(1, 2).reshape(b, self.dim, out_h, out_w)

    def band_rows(self, b: int, hh: int, ww: int, itemsize: int) -> Optional[int]:
        """Rows per band for a (b, 128, hh, ww) full-resolution map, or None to compute it whole: whole
        under autograd (the bands run in place) or when it fits in :attr:`stream_bytes`."""
        row = b * QK_DIM * ww * itemsize
        if torch.is_grad_enabled() or row * hh <= self.stream_bytes:
            return None
        # a band's temporaries: a few 128-channel maps of its rows
        return max(1, self.stream_bytes // (8 * row))

    def encodings(self, image: torch.Tensor, out_hw: Tuple[int, int], grid: Tuple[int, int]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The pooled query encoding (B, 128, H', W') and the pooled key encoding (B, 128, h, w)."""
        b, _, hh, ww = image.shape
        rows = self.band_rows(b, hh, ww, image.element_size())
        if rows is None:
            e = self.rope(self.image_encoder(image))
            return (F.adaptive_avg_pool2d(self.query_encoder(e), out_hw),
                    F.adaptive_avg_pool2d(self.key_encoder(e), grid))
        # in bands, in place: one image-resolution map at a time (the encoding is computed twice
        # rather than held twice: the key and the query encoders both start from it)
        buf = torch.empty(b, QK_DIM, hh, ww, dtype=image.dtype, device=image.device,
                          memory_format=torch.channels_last)  # a band of rows is one block of memory
        maps = []
        for enc, size in ((self.key_encoder, grid), (self.query_encoder, out_hw)):
            self.image_encoder.forward_banded_(image, buf, rows)
            for r in range(0, hh, rows):
                buf[:, :, r:r + rows] = self.rope(buf[:, :, r:r + rows], r, hh)
            enc.forward_banded_(buf, buf, rows)
            # pooling to the map's own size is the identity: no second image-size map
            maps.append(buf if size == (hh, ww) and enc is self.query_encoder else F.adaptive_avg_pool2d(buf, size))
        return maps[1], maps[0]

    def query_bands(self, q: torch.Tensor):
        """``(first pixel, (B, heads, n, 32) queries)`` for bands of output rows of the pooled query
        encoding ``q`` (B, 128, H', W'): GroupNorm, the 3x3 convolution, RMSNorm and projection."""
        b, _, oh, ow = q.shape
        rows = self.band_rows(b, oh, ow, q.element_size())
        if rows is None:
            yield 0, self.heads(self.query_conv(F.group_norm(q, 8)), self.q_proj, self.norm_q)
            return
        stats = group_stats(q, 8, rows)
        gn = nn.GroupNorm(8, QK_DIM, affine=False)
        for i0 in range(0, oh, rows):
            i1 = min(oh, i0 + rows)
            # the 3x3 convolution of these rows needs one row either side (zeros outside the map)
            top, bottom = max(0, i0 - 1), min(oh, i1 + 1)
            band = F.pad(group_norm_with(q[:, :, top:bottom], stats, gn), (0, 0, 1 - (i0 - top), 1 - (bottom - i1)))
            yield i0 * ow, self.heads(F.conv2d(band, self.query_conv.weight, padding=(0, 1)), self.q_proj, self.norm_q)


# -- the authors' files ----------------------------------------------------------------------------
def _release_only_shapes(dim: int) -> Dict[str, Tuple[int, ...]]:
    """Released keys of the discarded value path (see the module doc), with their shapes."""
    p = "cross_decode.cross_attn."
    return {p + "norm_v.weight": (dim,), p + "attention.v_proj_weight": (QK_DIM, dim),
            p + "attention.out_proj.weight": (QK_DIM, QK_DIM), p + "attention.out_proj.bias": (QK_DIM,)}


_RENAMED = {"cross_decode.conv2d.weight": "query_conv.weight",
            "cross_decode.cross_attn.norm_q.weight": "norm_q.weight",
            "cross_decode.cross_attn.norm_k.weight": "norm_k.weight",
            "cross_decode.cross_attn.attention.q_proj_weight": "q_proj.weight",
            "cross_decode.cross_attn.attention.k_proj_weight": "k_proj.weight",
            "sft_key.gamma.weight": "sft_key.gamma.weight", "sft_key.beta.weight": "sft_key.beta.weight"}
_ENCODERS = ("image_encoder.", "query_encoder.", "key_encoder.", "key_features_encoder.")


def checkpoint_filter_fn(sd: Mapping[str, torch.Tensor], model: JafarCore, source: str = "state dict"
                         ) -> Dict[str, torch.Tensor]:
    """The authors' JAFAR state dict (the ``'jafar'`` entry of their ``.pth``, keys as their
    ``JAFAR`` module names them) in :class:`JafarCore`'s keys. The dead value path is checked
    (present, with the release's shapes for ``model``'s C) and dropped; ``in_proj_bias`` is split
    into the q and k biases. Any other key, or a missing one, is refused with a
    :class:`WeightFileError` naming it."""
    sd = dict(sd)
    dead = _release_only_shapes(model.dim)
    bias = sd.pop("cross_decode.cross_attn.attention.in_proj_bias", None)
    wanted = {**dead, "cross_decode.cross_attn.attention.in_proj_bias": (3 * QK_DIM,)}
    wrong = [f"{k} {tuple(v.shape) if v is not None else 'missing'} (release: {s})"
             for k, s in wanted.items() for v in [bias if k.endswith("in_proj_bias") else sd.get(k)]
             if v is None or tuple(v.shape) != s]
    if wrong:
        raise WeightFileError(f"{source} is not a released JAFAR for C={model.dim}: {wrong[0]}"
                              + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
    out = {"q_proj.bias": bias[:QK_DIM], "k_proj.bias": bias[QK_DIM:2 * QK_DIM]}
    for k, v in sd.items():
        if k in dead:
            continue
        if k in _RENAMED:
            out[_RENAMED[k]] = v
        elif k.startswith(_ENCODERS) or k == "rope.freqs":
            out[k] = v
        else:
            raise WeightFileError(f"{source}: key {k!r} is not part of a released JAFAR")
    return out


def release_state_dict(model: JafarCore) -> Dict[str, torch.Tensor]:
    """``model``'s weights in the authors' key layout (the inverse of :func:`checkpoint_filter_fn`;
    the discarded value path filled with zeros, as it never reaches the output)."""
    sd = model.state_dict()
    out = {k: v for k, v in sd.items() if k.startswith(_ENCODERS) or k == "rope.freqs"}
    out.update({rk: sd[k] for rk, k in _RENAMED.items()})
    z = sd["q_proj.bias"].new_zeros
    out["cross_decode.cross_attn.attention.in_proj_bias"] = torch.cat([sd["q_proj.bias"], sd["k_proj.bias"],
                                                                       z(QK_DIM)])
    out.update({k: z(s) for k, s in _release_only_shapes(model.dim).items()})
    return out


# -- the registered upsampler ----------------------------------------------------------------------
@register_upsampler("jafar")
class JAFAR(CoreUpsampler):
    """JAFAR on the last layer: image (B,3,H,W), {last: (B,D,H/16,W/16)} -> (B,D,f*H/16,f*W/16), or
    (B,D,H_out,W_out) for any ``output_size`` (``any_output_size``).

    Guidance pixels come from ``image_hr`` when one is given (JAFAR reads the image at any size).

    Args:
        spec: the backbone (C = ``spec.embed_dim``; the released files exist for C = 384 / 768).
        factor: the output grid without an ``output_size``: ``factor`` x the token grid (any positive integer).
        kernel_size, num_heads: as :class:`JafarCore` (the released files: 1 and 4).
        zero_start: new trainings start at bilinear interpolation: ``bilinear + gate(jafar - bilinear)``
            with a :class:`~.base.DetailGate` at zero. The authors' files need the default False.
    """

    def __init__(self, spec: BackboneSpec, factor: int = 4, kernel_size: int = 1, num_heads: int = 4,
                 zero_start: bool = False):
        core = JafarCore(spec.embed_dim, kernel_size=int(kernel_size), num_heads=int(num_heads))
        super().__init__(spec, factor, core, kernel_size=int(kernel_size), num_heads=int(num_heads),
                         zero_start=bool(zero_start))

    read_release = staticmethod(read_release_file)

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """The authors' ``.pth`` (:func:`.read_release_file`: their training checkpoint, whose ``'jafar'``
        entry is read, or that state dict alone) through :func:`checkpoint_filter_fn`, under ``core.``."""
        if self.zero_start:
            raise WeightFileError(f"{source}: the authors' JAFAR has no zero start; build it with zero_start=False")
        inner = sd["jafar"] if "jafar" in sd else sd
        if not isinstance(inner, Mapping) or not all(isinstance(v, torch.Tensor) for v in inner.values()):
            raise WeightFileError(f"{source}: {'its jafar entry' if 'jafar' in sd else 'it'} is not a state dict "
                                  f"of tensors (the authors' JAFAR files hold one under 'jafar')")
        return {f"core.{k}": v for k, v in checkpoint_filter_fn(inner, self.core, source).items()}
