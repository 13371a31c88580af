"""FeatUp's joint bilateral upsampler (JBU, Fu et al. ICLR 2024) in pure PyTorch, any integer factor.

A :class:`JBULayer` upsamples a feature map by an integer ``scale``: the source is resized
bicubically to the guidance size, then every output pixel is a 7x7 weighted average of its
neighbours with a per-pixel kernel = learned range kernel (from the guidance image) x spatial
Gaussian, normalised, plus a small learned fixup. The kernel is shared across channels.

:class:`JBUUpsampler` (``jbu``) chains one layer per prime factor of the total factor (FeatSharp's
generalisation; 16 = 2*2*2*2 gives FeatUp's released 4-layer stack and its exact key layout
``up1..up4``, ``fixup_proj.1``) and ends with ``x + 0.1 * conv1x1(dropout(x))``.

Memory: the released code unfolds the (B, D, H, W) source to (B, D, 49, H, W) before the
einsum, 49x the map (4.9 GB for D=384 at 256x256). Here the 49 neighbour maps are strided
*views* of the padded source (no copy) and are accumulated with in-place ``addcmul_``; autograd
saves only the padded source and the kernel. Peak memory is a few (B, D, H, W) maps; the
result equals unfold + einsum (tested).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from .base import DetailGate, Upsampler, register_upsampler
from .layers.layout import accumulate_pointwise, channels_last, pointwise

__all__ = ["JBULayer", "JBUUpsampler", "FeatSharpJBULayer", "FeatSharpJBUStack", "adaptive_filter",
           "neighbour_similarity", "prime_factors", "spatial_kernel", "spatial_log_kernel"]


def prime_factors(n: int) -> List[int]:
    """Prime factors of ``n >= 2`` in ascending order, with multiplicity: 12 -> [2, 2, 3]."""
    if int(n) != n or n < 2:
        raise ValueError(f"factor must be an integer >= 2, got {n!r}")
    n, out, p = int(n), [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def pad_mode(hw, r: int) -> str:
    """How :func:`pad2d` pads a map of size ``hw``: reflect (as released) where the map is larger
    than ``r``, replicate otherwise (reflect is undefined there; only 1- to 3-pixel maps hit this)."""
    return "reflect" if min(hw) > r else "replicate"


def pad2d(x: torch.Tensor, r: int) -> torch.Tensor:
    """Pad the last two dims by ``r`` (:func:`pad_mode`)."""
    return F.pad(x, (r, r, r, r), mode=pad_mode(x.shape[-2:], r))


def pixel_major(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) view: contiguous when ``x`` is channels-last, so reductions and
    softmaxes over C run along memory."""
    return x.permute(0, 2, 3, 1)


def bicubic_matrix(n: int, size: int, pad: int, mode: str, like: torch.Tensor) -> torch.Tensor:
    """(size + 2*pad, n): the weights of torch's 1-D bicubic resize of ``n`` samples to ``size``
    (align_corners=False), rows padded by ``pad`` in ``mode``: made by resizing an identity."""
    eye = torch.eye(n, dtype=like.dtype, device=like.device).view(1, n, n, 1)
    rows = F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=False).view(1, n, size)
    return F.pad(rows, (pad, pad), mode=mode)[0].t() if pad else rows[0].t()


def bicubic_padded(source: torch.Tensor, size, pad: int) -> torch.Tensor:
    """``pad2d(F.interpolate(source, size, mode='bicubic'), pad)`` channels-last: (B, D, h, w) ->
    (B, H + 2 pad, W + 2 pad, D), as two matrix products with the interpolation matrices of
    :func:`bicubic_matrix`, padding included (it only repeats their rows). On CPU torch's bicubic
    kernel takes 5-10x longer for maps of hundreds of channels, and the padding and the layout
    change would be two more passes over the enlarged map. Same values up to rounding."""
    b, d, h, w = source.shape
    mode = pad_mode(size, pad)
    ry = bicubic_matrix(h, size[0], pad, mode, source)
    rx = bicubic_matrix(w, size[1], pad, mode, source)
    cols = torch.matmul(rx, source.permute(0, 2, 3, 1))  # (B, h, W + 2 pad, D)
    return torch.matmul(ry, cols.flatten(2)).view(b, ry.shape[0], rx.shape[0], d)


def adaptive_filter(source: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-pixel filtering with a kernel shared across channels.

    Args:
        source: (B, D, H, W) map.
        kernel: (B, k*k, H, W), k = 2*radius+1, neighbour index ``i*k + j`` = offset (i-r, j-r).
    Returns:
        (B, D, H, W) (channels-last memory): ``out[b,d,y,x] = sum_ij kernel[b,ik+j,y,x] *
        pad(source)[b,d,y+i,x+j]`` (reflect padding), i.e. unfold + einsum without materialising
        the unfold.
    """
    k = 2 * radius + 1
    b, d, h, w = source.shape
    if kernel.shape != (b, k * k, h, w):
        raise ValueError(f"kernel {tuple(kernel.shape)} does not fit source {tuple(source.shape)} and k={k}")
    return filter_padded(pad2d(channels_last(source), radius).permute(0, 2, 3, 1), kernel, radius)


def filter_padded(padded: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`adaptive_filter` of a source already padded and channels-last, ``padded``
    (B, H + 2r, W + 2r, D), with ``kernel`` (B, k*k, H, W): (B, D, H, W), channels-last memory.

    The k*k neighbour maps are strided views of ``padded`` accumulated in place with
    ``addcmul_``; channels-last, each pass runs over whole contiguous pixels (D values) with one
    kernel value each, ~2x faster on CPU than NCHW rows of W values."""
    k = 2 * radius + 1
    h, w = kernel.shape[-2:]
    kernel = kernel.permute(0, 2, 3, 1).contiguous()  # (B, H, W, k*k): small
    out = None
    for i in range(k):
        for j in range(k):
            nb = padded[:, i:i + h, j:j + w]  # view, no copy
            wk = kernel[..., i * k + j:i * k + j + 1]
            # in place: neither addcmul's backward nor anything else needs the running sum
            out = nb * wk if out is None else out.addcmul_(nb, wk)
    return out.permute(0, 3, 1, 2)


def run_pointwise(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` for a chain of 1x1 convolutions, activations and channel dropout on a
    (B, C, H, W) map, the convolutions as matrix products (:func:`~..ops.layout.pointwise`):
    channels-last out, the same values up to rounding."""
    for layer in layers:
        x = pointwise(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
    return x


def spatial_log_kernel(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """-(x^2+y^2) / (2 sigma^2) on a linspace(-1, 1, k)^2 grid: (1, k*k, 1, 1)."""
    k = 2 * radius + 1
    t = torch.linspace(-1.0, 1.0, k, device=sigma.device, dtype=sigma.dtype)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return (-(xx.square() + yy.square()) / (2 * sigma.square())).reshape(1, k * k, 1, 1)


def spatial_kernel(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Gaussian exp(-(x^2+y^2) / (2 sigma^2)) on a linspace(-1, 1, k)^2 grid: (1, k*k, 1, 1), unnormalised."""
    return torch.exp(spatial_log_kernel(sigma, radius))


def neighbour_similarity(key: torch.Tensor, radius: int) -> torch.Tensor:
    """key (B, K, H, W) -> (B, k*k, H, W): <key(centre), key(neighbour i*k + j)> (reflect-padded),
    with no (B, K, k*k, H, W) tensor built.

    Without autograd, channels-last: the k neighbours along one kernel row are one overlapping
    strided view of the padded keys, so k products and sums do the work of k*k (4x faster on a
    64x64 map). Autograd would scatter the gradient of such a view element by element (20x slower
    than the whole forward), so where the keys need a gradient the sums run offset by offset."""
    k = 2 * radius + 1
    b, c, h, w = key.shape
    if torch.is_grad_enabled() and key.requires_grad:
        padded = pad2d(key, radius)
        return torch.stack([(key * padded[:, :, i:i + h, j:j + w]).sum(1) for i in range(k) for j in range(k)], dim=1)
    key = channels_last(key)
    centre = key.permute(0, 2, 3, 1).unsqueeze(3)  # (B, H, W, 1, K)
    padded = pad2d(key, radius).permute(0, 2, 3, 1)  # (B, H + 2r, W + 2r, K), contiguous
    rows = []
    for i in range(k):
        row = padded[:, i:i + h]
        s = row.stride()
        window = row.as_strided((b, h, w, k, c), (s[0], s[1], s[2], s[2], s[3]))  # [..., j, :] = row[:, y, x + j]
        rows.append((centre * window).sum(-1))
    return torch.cat(rows, dim=-1).permute(0, 3, 1, 2)


class JBULayer(nn.Module):
    """One learned-range joint bilateral upsampling step by an integer ``scale``.

    ``forward(source (B,D,h,w), image (B,3,H,W)) -> (B, D, h*scale, w*scale)``; the guidance is
    the image average-pooled to the output size. 6,233 parameters whatever ``dim`` is
    (range projector 1,184; kernel fixup 5,047; temperature and sigma).

    Released key layout: ``range_temp``, ``sigma_spatial``, ``range_proj.{0,3}``, ``fixup_proj.{0,3}``.
    """

    def __init__(self, dim: int, scale: int = 2, radius: int = 3, key_dim: int = 32,
                 guidance_dim: int = 3, dropout: float = 0.1):
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        self.dim, self.scale, self.radius = int(dim), int(scale), int(radius)
        k2 = (2 * radius + 1) ** 2
        self.range_temp = nn.Parameter(torch.zeros(()))
        self.sigma_spatial = nn.Parameter(torch.ones(()))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(dropout), nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + k2, k2, 1), nn.GELU(), nn.Dropout2d(dropout), nn.Conv2d(k2, k2, 1))

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """guidance (B,3,H,W) -> softmax over the k*k neighbours of temperature * <key(centre), key(nb)>:
        (B, k*k, H, W), channels-last memory. No (B, 32, k*k, H, W) tensor is built."""
        logits = pixel_major(neighbour_similarity(run_pointwise(self.range_proj, guidance), self.radius))
        temp = torch.exp(self.range_temp).clamp(1e-4, 1e4)
        return torch.softmax(logits * temp, dim=-1).permute(0, 3, 1, 2)

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """The per-pixel filter (B, k*k, H, W) (channels-last memory) for guidance (B, 3, H, W)."""
        combined = pixel_major(self.range_kernel(guidance)) * spatial_kernel(self.sigma_spatial, self.radius).view(-1)
        combined = combined / combined.sum(-1, keepdim=True).clamp_min(1e-7)
        inputs = torch.cat([combined, pixel_major(guidance.to(combined.dtype))], dim=-1).permute(0, 3, 1, 2)
        return (combined + 0.1 * pixel_major(run_pointwise(self.fixup_proj, inputs))).permute(0, 3, 1, 2)

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if source.shape[1] != self.dim:
            raise ValueError(f"JBULayer built for {self.dim} channels, got a source {tuple(source.shape)}")
        h, w = source.shape[-2] * self.scale, source.shape[-1] * self.scale
        guidance = F.adaptive_avg_pool2d(image.to(source.dtype), (h, w))
        # the bicubic enlargement, reflect-padded for the filter, channels-last, in one step
        return filter_padded(bicubic_padded(source, (h, w), self.radius), self.kernel(guidance), self.radius)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}, radius={self.radius}"


@register_upsampler("jbu")
class JBUUpsampler(Upsampler):
    """FeatUp JBU on the last layer: image (B,3,H,W), {last: (B,D,H/16,W/16)} -> (B,D,f*H/16,f*W/16).

    A stack by any integer ``factor >= 2``: one :class:`JBULayer` per prime factor (``up1..upN``,
    ascending), then ``x + 0.1 * fixup_proj(x)`` (:meth:`upsample`). State-dict keys are the
    released ones (``up1..``, ``fixup_proj.1``), so a released 16x checkpoint for the same width
    maps key for key (factor 16 at D=384: 4 * 6,233 + 147,840 = 172,772 parameters).
    ``zero_start=True`` (new trainings): ``bilinear + detail(jbu - bilinear)``, ``detail`` a
    :class:`~.base.DetailGate` starting at 0 (the :meth:`Upsampler.forward` template), so the
    untrained module is bilinear interpolation.
    """

    needs_image = True
    uses_image_hr = True  # guidance is average-pooled per level from the real pixels

    def __init__(self, spec: BackboneSpec, factor: int = 2, zero_start: bool = False):
        super().__init__(spec, factor, (spec.depth - 1,), zero_start=bool(zero_start))
        self.primes = prime_factors(self.factor)
        for n, p in enumerate(self.primes, 1):
            self.add_module(f"up{n}", JBULayer(spec.embed_dim, p))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(spec.embed_dim, spec.embed_dim, 1))
        if self.zero_start:
            self.detail = DetailGate(spec.embed_dim)

    def upsample(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The stack: ``source`` (B,D,h,w) guided by ``image`` (B,3,H,W) -> (B,D,f*h,f*w), the method's
        output without the zero-start gate."""
        # The final ``x + 0.1 * conv1x1(dropout(x))`` runs first, on the source: every layer is
        # linear in its source and filters all channels alike (its kernels come from the image), so
        # the channel mixing commutes with the stack and costs f^2 times less on the small map. The
        # bias is added last (a layer's kernels need not sum to 1). Same values up to rounding.
        conv = self.fixup_proj[1]
        x = accumulate_pointwise(source.clone(memory_format=torch.channels_last), self.fixup_proj[0](source),
                                 conv.weight, 0.1)
        for n in range(1, len(self.primes) + 1):
            x = getattr(self, f"up{n}")(x, image)
        return x.add_(0.1 * conv.bias.to(x.dtype).view(1, -1, 1, 1))  # x: the last filter's fresh output

    def detail_map(self, image: torch.Tensor, layers: Mapping[int, torch.Tensor], source: torch.Tensor,
                   base: Optional[torch.Tensor], backbone: Optional[nn.Module] = None,
                   image_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.upsample(source, self.pixels(image, image_hr))
        # zero start: a per-channel share of what JBU changes, starting at none
        return out if base is None else self.detail(out - base.to(out.dtype))

    def at_factor(self, factor: int, source: str = "this upsampler") -> "JBUUpsampler":
        """The stack's first layers whose factors multiply to ``factor``, with its final fixup (and
        zero-start gate): e.g. ``up1`` of a 16x stack (2*2*2*2) is a 2x JBU, for a stride-8 map
        where the distillation recipe trained 16x. Other factors are refused."""
        n, reached = 0, 1
        while n < len(self.primes) and reached < factor:
            reached *= self.primes[n]
            n += 1
        if reached != factor or factor < 2:
            prefixes = [math.prod(self.primes[:k]) for k in range(1, len(self.primes) + 1)]
            raise WeightFileError(f"{source}: factor={factor} in the config, {self.factor} in the file, a JBU stack "
                                  f"of layers {self.primes} whose first layers give factors {prefixes} only")
        out = JBUUpsampler(self.spec, factor, zero_start=self.zero_start)
        dropped = tuple(f"up{k}." for k in range(n + 1, len(self.primes) + 1))
        out.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith(dropped)}, strict=True)
        out.file_metadata = {**self.file_metadata, "first_layers_of_factor": self.factor}
        out.weight_file = self.weight_file
        return out.to(self.fixup_proj[1].weight.device)

    def from_release_layout(self, sd: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        """Released keys are ours (``up1..upN``, ``fixup_proj.1``), possibly under FeatUp's
        ``upsampler.`` prefix; refuse a stack of another depth or width."""
        sd = {(k[len("upsampler."):] if k.startswith("upsampler.") else k): v for k, v in sd.items()}
        if "fixup_proj.1.weight" not in sd:
            raise WeightFileError(f"{source} is not a JBU stack: no 'fixup_proj.1.weight' among {sorted(sd)[:6]}")
        d_file = sd["fixup_proj.1.weight"].shape[0]
        n_file = len({k.split(".")[0] for k in sd if k.startswith("up")})
        n_own = len(prime_factors(self.factor))
        if d_file != self.embed_dim or n_file != n_own:
            raise WeightFileError(
                f"{source} is a JBU stack of {n_file} layers for D={d_file}; this one (factor {self.factor}, "
                f"{self.spec.arch}) has {n_own} layers for D={self.embed_dim}")
        return sd


# -- FeatSharp's variant (its low-resolution path) ---------------------------------------------------
class FeatSharpJBULayer(nn.Module):
    """FeatSharp's JBU step by ``scale``: ``forward(source (B,D,h,w), guidance (B,3,s*h,s*w))
    -> (B, D, s*h, s*w)``; the guidance arrives at the output size (:class:`FeatSharpJBUStack`
    pools it per level).

    Against :class:`JBULayer`: the source is upsampled bilinearly, there are no fixup convs and
    no dropout in the range projector (keys ``range_proj.{0,2}``), and the kernels carry the
    release's learned scalar weights: ``normalise(exp(range_alpha) * range * exp(spatial_alpha) *
    spatial)`` (both 0 at init). The normalisation cancels the two scalars (they reach the output
    only through its 1e-7 floor), so the kernel is FeatUp's normalised product whatever they hold;
    they are kept so that the authors' checkpoints load key for key.
    Keys as released: ``range_temp``, ``sigma_spatial``, ``range_alpha``, ``spatial_alpha``,
    ``range_proj.{0,2}``: 1,188 parameters whatever ``dim`` is.
    """

    def __init__(self, dim: int, scale: int = 2, radius: int = 3, key_dim: int = 32, guidance_dim: int = 3):
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        self.dim, self.scale, self.radius = int(dim), int(scale), int(radius)
        self.range_temp = nn.Parameter(torch.zeros(()))
        self.sigma_spatial = nn.Parameter(torch.ones(()))
        self.range_alpha = nn.Parameter(torch.zeros(()))
        self.spatial_alpha = nn.Parameter(torch.zeros(()))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Conv2d(key_dim, key_dim, 1))

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """The per-pixel filter (B, k*k, H, W) (channels-last memory), summing to 1, for guidance (B, 3, H, W)."""
        temp = torch.exp(self.range_temp).clamp(1e-4, 1e4)
        logits = pixel_major(neighbour_similarity(run_pointwise(self.range_proj, guidance), self.radius))
        combined = (torch.exp(self.range_alpha) * torch.softmax(logits * temp, dim=-1)) * (
            torch.exp(self.spatial_alpha) * spatial_kernel(self.sigma_spatial, self.radius).view(-1))
        return (combined / combined.sum(-1, keepdim=True).clamp_min(1e-7)).permute(0, 3, 1, 2)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        if source.shape[1] != self.dim:
            raise ValueError(f"FeatSharpJBULayer built for {self.dim} channels, got a source {tuple(source.shape)}")
        size = (source.shape[-2] * self.scale, source.shape[-1] * self.scale)
        if tuple(guidance.shape[-2:]) != size:
            raise ValueError(f"guidance {tuple(guidance.shape)} must be at the output size {size}")
        up = F.interpolate(channels_last(source), size=size, mode="bilinear", align_corners=False)  # ~30x faster on CPU
        return adaptive_filter(up, self.kernel(guidance.to(source.dtype)), self.radius)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}, radius={self.radius}"


class FeatSharpJBUStack(nn.Module):
    """FeatSharp's JBU by any integer ``factor >= 2``:
    ``(source (B,D,h,w), guidance (B,3,f*h,f*w)) -> (B,D,f*h,f*w)``, one
    :class:`FeatSharpJBULayer` per prime factor (``ups.0``, ``ups.1``, ...), each guided by
    ``guidance`` (the image already resized to the output grid) average-pooled to its size."""

    def __init__(self, dim: int, factor: int = 2):
        super().__init__()
        self.dim, self.factor = int(dim), int(factor)
        self.primes = prime_factors(factor)
        self.ups = nn.ModuleList(FeatSharpJBULayer(dim, p) for p in self.primes)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        x = source
        for layer in self.ups:
            size = (x.shape[-2] * layer.scale, x.shape[-1] * layer.scale)
            x = layer(x, F.adaptive_avg_pool2d(guidance, size))
        return x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, factor={self.factor}, primes={self.primes}"
