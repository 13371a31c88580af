"""LoftUp (Huang et al., ICCV 2025): full-resolution Fourier features of the image, cross-attending
to the (channel-normalised) tokens with a 2-layer transformer; the output has the guidance
image's size and is LayerNorm'd per pixel (it is **not** in the backbone's feature space).

Data flow (C feature dim, (h, w) token grid, (H, W) the guidance image = the output size; the
hub's ``loftup_dinov2s``: n_freqs 20, 4 heads, 2 layers, E = C + 20)::

    feats (B,C,h,w) --channelnorm: LayerNorm over C--> f
    image (B,3,H,W) --min-max scale per channel (see batch_statistics)--> x' in [-0.5, 0.5]
      --Fourier: [rows, cols in linspace(-1,1), x'] (5) x exp(linspace(-2,10,20)), + learned phases,
        sin and cos, and x' --> (B,203,H,W)
      --first_conv: LayerNorm(203) -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU--> queries (B,E,H,W)
    keys/values: [f, token Fourier features (20)] (B,E,hw)
    2 x (x += MHA(LN(x), LN(kv), LN(kv)); x += MLP(LN(x)));  LN  -- per pixel, global over hw tokens
    final_conv: conv1x1 E->C -> LayerNorm over C (eps 1e-6) --> (B,C,H,W)

``batch_statistics`` (item 3 of the issue): the release's MinMaxScaler takes the minimum and maximum
of each colour channel over the whole **batch** (B, H, W together), so one picture's output
depends on the pictures it is batched with (73% relative change measured on the release's
fixture). MMSeg and Detectron2 users expect a picture's features not to depend on its batch, so
the default is ``'image'`` (per picture); ``'batch'`` is the release's computation, for the
equality tests and for reproducing the authors' numbers on their batches.

Memory: the attention runs over chunks of pixels (each pixel's query is independent through the
whole transformer), so it holds ``chunk x hw`` weights at a time; what bounds the peak at large
outputs is the full-resolution maps of ``first_conv`` (E + 203 channels per pixel).

Parameters: 4,303,894 for C=384 (54 released keys incl. BatchNorm statistics), as released.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from .base import CoreUpsampler, register_upsampler
from .layers.layout import run_folded
from .release_files import read_release_file

# attention weights held at once per chunk of pixels (B * heads * chunk * keys floats: 64 MB fp32)
ATTENTION_BUDGET = 1 << 24
BATCH_STATISTICS = ("image", "batch")


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a (B,C,H,W) map (eps 1e-5, affine); key ``norm.*`` as released."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FourierFeatures(nn.Module):
    """``(B,k,H,W) -> (B, 2 * n * (2 + k) [+ k], H, W)``: the coordinates (linspace(-1, 1), both ends)
    and the k input channels, each times n frequencies ``exp(linspace(-2, 10, n))``, plus a learned
    phase ``biases`` (2, 2 + k, n) per sin / cos, read through a raw reshape to (n, 2 + k) as the
    release does; channel index = freq * (2 + k) + input channel. ``with_input`` appends the input
    (the image's colours); without it only the coordinates are encoded (the tokens' grid)."""

    def __init__(self, n_freqs: int, n_inputs: int):
        super().__init__()
        self.n_freqs, self.n_inputs = int(n_freqs), int(n_inputs)
        self.biases = nn.Parameter(torch.randn(2, 2 + n_inputs, n_freqs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.linspace(-1, 1, h, device=x.device).view(h, 1).expand(h, w)
        cols = torch.linspace(-1, 1, w, device=x.device).view(1, w).expand(h, w)
        grid = torch.stack([rows, cols]).expand(b, 2, h, w)
        base = torch.cat([grid, x], dim=1) if self.n_inputs else grid  # (B, 2+k, H, W)
        freqs = torch.exp(torch.linspace(-2, 10, self.n_freqs, device=x.device))
        # fp32, multiply then add: the top frequencies (e^10) turn any other order into other numbers
        f = freqs.view(1, -1, 1, 1, 1) * base.float().unsqueeze(1)  # (B, n, 2+k, H, W)
        phase = self.biases.view(2, self.n_freqs, 2 + self.n_inputs, 1, 1)
        sin = torch.sin(f + phase[0]).flatten(1, 2)
        cos = torch.cos(f + phase[1]).flatten(1, 2)
        parts = [sin, cos, x.float()] if self.n_inputs else [sin, cos]
        return torch.cat(parts, dim=1)


class CrossAttention(nn.Module):
    """``x += MHA(LN_q(x), LN_kv(kv), LN_kv(kv))``, nn.MultiheadAttention's parameters (keys
    ``attention.in_proj_weight`` ... as released) run through scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads)  # holds the weights; its forward is not used

    def keys_values(self, kv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, M, E) -> k, v (B, heads, M, E/heads), computed once per layer for all pixel chunks."""
        e = kv.shape[-1]
        w, bias = self.attention.in_proj_weight, self.attention.in_proj_bias
        kv = self.norm_kv(kv)
        k = F.linear(kv, w[e:2 * e], bias[e:2 * e])
        v = F.linear(kv, w[2 * e:], bias[2 * e:])
        split = lambda t: t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        return split(k), split(v)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        e = x.shape[-1]
        q = F.linear(self.norm_q(x), self.attention.in_proj_weight[:e], self.attention.in_proj_bias[:e])
        q = q.view(q.shape[0], q.shape[1], self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
        return x + self.attention.out_proj(y)


class FeedForward(nn.Module):
    """``x += Linear(GELU(Linear(LN(x))))``, at the release's indices ``net.0, net.1, net.4`` (its
    dropouts, at p=0, are the identities)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Identity(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm, eps 1e-6 (``weight``, ``bias`` as released)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class LoftUpCore(nn.Module):
    """LoftUp as the hub's ``UpsamplerwithChannelNorm`` computes it, with the arguments in the usual
    order (the release takes ``(feats, image)``).

    ``forward(image (B,3,H,W), feats (B,C,h,w), output_size=None) -> (B,C,H',W')``: the guidance
    image is bilinearly resized to ``output_size`` first (the authors' recipe for other sizes;
    None: the image's size). Any h, w.

    Args:
        dim: C. n_freqs / num_heads / num_layers: 20 / 4 / 2 as released (the MLP width is C).
        batch_statistics: ``'image'`` (default): the colour min-max per picture; ``'batch'``: over the
            whole batch, as released (see the module doc).
        query_chunk: pixels per attention chunk; None picks one from :data:`ATTENTION_BUDGET`.
    """

    def __init__(self, dim: int, n_freqs: int = 20, num_heads: int = 4, num_layers: int = 2,
                 batch_statistics: str = "image", query_chunk: Optional[int] = None):
        super().__init__()
        if batch_statistics not in BATCH_STATISTICS:
            raise ValueError(f"LoftUp: batch_statistics must be one of {BATCH_STATISTICS}, got {batch_statistics!r}")
        pe_dim = 2 * 2 * 5  # the tokens' sine encoding: 2 coordinates x 5 frequencies x (sin, cos)
        width = dim + pe_dim
        if width % num_heads:
            raise ValueError(f"LoftUp: num_heads={num_heads} must divide C + {pe_dim} = {width}")
        self.dim, self.batch_statistics, self.query_chunk = int(dim), batch_statistics, query_chunk
        self.channelnorm = ChannelNorm(dim)
        self.pixel_fourier = FourierFeatures(n_freqs, 3)
        self.token_fourier = FourierFeatures(5, 0)
        start = 2 * 5 * n_freqs + 3
        self.first_conv = nn.Sequential(
            ChannelNorm(start), nn.Conv2d(start, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layers = nn.ModuleList(nn.ModuleList([CrossAttention(width, num_heads), FeedForward(width, dim)])
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)
        self.final_conv = nn.Sequential(nn.Conv2d(width, dim, 1), LayerNorm2d(dim))

    def min_max(self, image: torch.Tensor) -> torch.Tensor:
        """Each colour channel scaled to [-0.5, 0.5] by its min and max, per picture or per batch."""
        dims = (0, 2, 3) if self.batch_statistics == "batch" else (2, 3)
        lo, hi = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
        return (image - lo) / (hi - lo).clamp_min(1e-4) - 0.5

    def chunk_size(self, batch: int, keys: int) -> int:
        if self.query_chunk is not None:
            return max(1, int(self.query_chunk))
        return max(1, ATTENTION_BUDGET // max(1, batch * self.layers[0][0].heads * keys))

    def forward(self, image: torch.Tensor, feats: torch.Tensor,
                output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        if feats.dim() != 4 or feats.shape[1] != self.dim:
            raise ValueError(f"LoftUp: feats must be (B, {self.dim}, h, w), got {tuple(feats.shape)}")
        if image.dim() != 4 or image.shape[:2] != (feats.shape[0], 3):
            raise ValueError(f"LoftUp: image must be (B={feats.shape[0]}, 3, H, W), got {tuple(image.shape)}")
        if output_size is not None and tuple(int(s) for s in output_size) != tuple(image.shape[-2:]):
            image = F.interpolate(image, size=tuple(int(s) for s in output_size), mode="bilinear", align_corners=False)
        b, _, h, w = image.shape
        # eval BatchNorms folded into their convolutions: one full-resolution map fewer per pair
        x = run_folded(self.first_conv, self.pixel_fourier(self.min_max(image.float())))
        x = x.flatten(2).transpose(1, 2)  # (B, HW, E) pixel queries
        f = self.channelnorm(feats.float())
        kv = torch.cat([f, self.token_fourier(f[:, :0])], dim=1).flatten(2).transpose(1, 2)  # (B, hw, E)
        kvs = [attn.keys_values(kv) for attn, _ in self.layers]
        out = torch.empty_like(x)
        step = self.chunk_size(b, kv.shape[1])
        for s in range(0, x.shape[1], step):
            y = x[:, s:s + step]
            for (attn, ff), (k, v) in zip(self.layers, kvs):
                y = ff(attn(y, k, v))
            out[:, s:s + step] = self.norm(y)
        del x  # one full-resolution map fewer at the peak of the last convolution
        out = out.transpose(1, 2).reshape(b, -1, h, w)
        return self.final_conv(out).to(feats.dtype)  # computed in fp32, returned in the features' dtype


# -- the authors' files ----------------------------------------------------------------------------
_RENAMED_PREFIXES = (("pixel_fourier.", "fourier_feat.1."), ("token_fourier.", "lr_pe."),
                     ("layers.", "ca_transformer.layers."), ("norm.", "ca_transformer.norm."))


def _release_key(ours: str) -> str:
    """Our key -> the hub file's (``UpsamplerwithChannelNorm``: ``upsampler.*`` + ``channelnorm.*``)."""
    if ours.startswith("channelnorm."):
        return ours
    for mine, theirs in _RENAMED_PREFIXES:
        if ours.startswith(mine):
            return "upsampler." + theirs + ours[len(mine):]
    return "upsampler." + ours


def release_state_dict(model: LoftUpCore) -> Dict[str, torch.Tensor]:
    """``model``'s weights in the hub file's key layout (the inverse of :func:`checkpoint_filter_fn`)."""
    return {_release_key(k): v for k, v in model.state_dict().items()}


# what the authors' Lightning module holds beside the upsampler: the frozen backbone (model.0) and
# the training losses' attention downsampler and uncertainty net
_TRAINING_ONLY = ("model.0.", "downsampler.", "scale_net.")


def checkpoint_filter_fn(sd: Mapping[str, torch.Tensor], model: LoftUpCore, source: str = "state dict"
                         ) -> Dict[str, torch.Tensor]:
    """The authors' LoftUp weights in :class:`LoftUpCore`'s keys. Read: the hub's
    ``pytorch_model.bin`` (``upsampler.*`` and ``channelnorm.norm.*``) and the state dict of their
    stage-1 Lightning training checkpoints (the ChannelNorm stored as ``model.1.norm.*``; the frozen
    backbone ``model.0.*`` and the training-only ``downsampler.*`` / ``scale_net.*`` dropped). Any
    other key is refused with a :class:`WeightFileError` naming it; shapes are checked by the
    strict load that follows."""
    names = {_release_key(k): k for k in model.state_dict()}
    if "first_conv.1.weight" in sd and not any(k.startswith("upsampler.") for k in sd):
        raise WeightFileError(f"{source} holds the LoftUp upsampler without its ChannelNorm (the authors' "
                              f"push_to_hf file, keys 'first_conv.*' ...); use the hub's pytorch_model.bin, "
                              f"whose keys are 'upsampler.*' and 'channelnorm.norm.*'")
    out = {}
    for k, v in sd.items():
        if k.startswith(_TRAINING_ONLY):
            continue
        key = "channelnorm." + k[len("model.1."):] if k.startswith("model.1.norm.") else k
        if key not in names:
            raise WeightFileError(f"{source}: key {k!r} is not part of a released LoftUp "
                                  f"(expected 'upsampler.*' and 'channelnorm.norm.*')")
        out[names[key]] = v
    return out


# -- the registered upsampler ----------------------------------------------------------------------
@register_upsampler("loftup")
class LoftUp(CoreUpsampler):
    """LoftUp on the last layer: image (B,3,H,W), {last: (B,D,H/16,W/16)} -> (B,D,f*H/16,f*W/16), or
    (B,D,H_out,W_out) for any ``output_size``; LayerNorm'd per pixel (not the backbone's feature space).

    The guidance is ``image_hr`` when one is given, else ``image``, bilinearly resized to the output
    grid (the authors' recipe for an output size other than the image's).

    Args:
        spec: the backbone (C = ``spec.embed_dim``; released files for C = 384 / 512 / 768).
        factor: the output grid without an ``output_size``: ``factor`` x the token grid (16: the image's
            resolution).
        n_freqs, num_heads, num_layers: as released (20, 4, 2).
        batch_statistics: ``'image'`` (default, a picture's output never depends on its batch) or
            ``'batch'`` (the release's batch-wide colour scaling).
        zero_start: new trainings start at bilinear interpolation (``bilinear + gate(loftup -
            bilinear)``, a :class:`~.base.DetailGate` at zero). The authors' files need False.
    """

    def __init__(self, spec: BackboneSpec, factor: int = 16, n_freqs: int = 20, num_heads: int = 4,
                 num_layers: int = 2, batch_statistics: str = "image", zero_start: bool = False):
        core = LoftUpCore(spec.embed_dim, int(n_freqs), int(num_heads), int(num_layers), batch_statistics)
        super().__init__(spec, factor, core, n_freqs=int(n_freqs), num_heads=int(num_heads),
                         num_layers=int(num_layers), batch_statistics=batch_statistics, zero_start=bool(zero_start))

    read_release = staticmethod(read_release_file)

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """The hub's ``pytorch_model.bin`` (or a Lightning checkpoint, whose ``state_dict`` is read)
        through :func:`checkpoint_filter_fn`, under ``core.``."""
        if self.zero_start:
            raise WeightFileError(f"{source}: the authors' LoftUp has no zero start; build it with zero_start=False")
        if isinstance(sd.get("state_dict"), Mapping):
            sd = sd["state_dict"]
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightFileError(f"{source} does not hold a state dict of tensors (the hub's pytorch_model.bin, "
                                  f"or a Lightning checkpoint's 'state_dict')")
        return {f"core.{k}": v for k, v in checkpoint_filter_fn(sd, self.core, source).items()}
