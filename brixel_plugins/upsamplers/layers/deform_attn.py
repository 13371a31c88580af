"""Multi-scale deformable attention (Deformable DETR / ViT-Adapter style) in plain PyTorch.

No custom CUDA kernel: each level is sampled with one bilinear ``F.grid_sample`` call, which is
differentiable with respect to the values *and* the sampling locations, runs on CPU and GPU, and
needs nothing compiled.

Conventions (the standard MSDeformAttn ones):

- Sampling locations are normalised per level to ``[0, 1]`` with ``(x, y)`` order; ``(0, 0)`` is
  the top-left *corner* of the map and ``(1, 1)`` the bottom-right corner, so the centre of pixel
  ``(i, j)`` of an ``H x W`` level is ``((j + 0.5) / W, (i + 0.5) / H)`` (``align_corners=False``).
- Points outside the map read zeros (``padding_mode='zeros'``): a bilinear tap whose neighbours
  fall partly outside gets only the in-bounds neighbours' weighted contributions.
"""
from __future__ import annotations

import contextlib
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

Shapes = Union[torch.Tensor, Sequence[Tuple[int, int]]]


def _as_shape_list(spatial_shapes: Shapes) -> List[Tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def multi_scale_deformable_attn(value: torch.Tensor, spatial_shapes: Shapes,
                                sampling_locations: torch.Tensor,
                                attention_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of bilinear samples from several flattened feature levels.

    Args:
        value: ``(B, S, M, Dh)``, the levels flattened row-major and concatenated,
            ``S = sum_l H_l * W_l``; M heads of Dh channels.
        spatial_shapes: ``(L, 2)`` long tensor or a sequence of ``(H_l, W_l)``.
        sampling_locations: ``(B, Lq, M, L, P, 2)``, normalised ``(x, y)`` in ``[0, 1]`` (values
            outside sample zero padding).
        attention_weights: ``(B, Lq, M, L, P)``, usually softmax-normalised over ``L * P``.

    Returns:
        ``(B, Lq, M * Dh)`` in ``value``'s dtype.
    """
    shapes = _as_shape_list(spatial_shapes)
    b, s, m, dh = value.shape
    _, lq, m2, n_levels, n_points, two = sampling_locations.shape
    if m2 != m or two != 2 or n_levels != len(shapes):
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} do not fit value "
                         f"{tuple(value.shape)} with {len(shapes)} levels")
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {s}")
    if attention_weights.shape != (b, lq, m, n_levels, n_points):
        raise ValueError(f"attention_weights {tuple(attention_weights.shape)} should be "
                         f"{(b, lq, m, n_levels, n_points)}")

    levels = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1] coordinates; with align_corners=False, -1 and 1 are the outer
    # pixel edges, which is exactly the [0, 1] corner-to-corner convention above.
    grids = (2.0 * sampling_locations - 1.0).to(value.dtype)
    weights = attention_weights.to(value.dtype)
    out = None
    for lvl, (h, w) in enumerate(shapes):
        # (B, HW, M, Dh) -> (B*M, Dh, H, W), contiguous: grid_sample reads it ~15% faster so
        v = levels[lvl].permute(0, 2, 3, 1).reshape(b * m, dh, h, w).contiguous()
        # Points outer, queries inner: (B, Lq, M, P, 2) -> (B*M, P, Lq, 2), so the weighted sum
        # over the P points below reduces a middle dimension of contiguous rows (on CPU ~2x
        # faster than reducing a last dimension of 4). Contiguous on purpose: grid_sample reads
        # a strided grid 3x slower.
        g = grids[:, :, :, lvl].permute(0, 2, 3, 1, 4).reshape(b * m, n_points, lq, 2).contiguous()
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*M, Dh, P, Lq)
        a = weights[:, :, :, lvl].permute(0, 2, 3, 1).reshape(b * m, 1, n_points, lq).contiguous()
        level_out = (sampled * a).sum(2)  # (B*M, Dh, Lq)
        out = level_out if out is None else out + level_out
    return out.view(b, m * dh, lq).transpose(1, 2).contiguous()


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """``x.softmax(-1)`` for short rows (a head's L*P attention logits): the same values, written
    out because torch's CPU softmax costs ~5x more than these three ops on rows of 4 to 16."""
    e = (x - x.amax(-1, keepdim=True).detach()).exp()
    return e / e.sum(-1, keepdim=True)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with a reduced value dimension (ViT-Adapter variant).

    Args:
        d_model: query / output channels D.
        n_levels: number of value levels L.
        n_heads: attention heads M; ``int(d_model * ratio)`` must divide by it.
        n_points: sampling points P per head and level.
        ratio: value channels = ``int(d_model * ratio)`` (ViT-Adapter uses 0.5).

    Parameters (names as in the released checkpoints): ``sampling_offsets`` (D -> M*L*P*2),
    ``attention_weights`` (D -> M*L*P), ``value_proj`` (D -> D*ratio), ``output_proj`` (D*ratio -> D).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0):
        super().__init__()
        value_dim = int(d_model * ratio)
        if value_dim % n_heads:
            raise ValueError(f"value channels int({d_model} * {ratio}) = {value_dim} must divide by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.ratio = ratio
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, value_dim)
        self.output_proj = nn.Linear(value_dim, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start as rays in M evenly spread directions (point k at distance k+1 pixels,
        the direction scaled so its larger component is 1), uniform attention over the points."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        dirs = torch.stack([theta.cos(), theta.sin()], -1)
        dirs = dirs / dirs.abs().max(-1, keepdim=True).values
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = dirs.view(self.n_heads, 1, 1, 2).expand(-1, self.n_levels, self.n_points, -1) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Shapes, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            query: ``(B, Lq, D)``.
            reference_points: ``(B or 1, Lq, L, 2)`` normalised ``(x, y)`` in ``[0, 1]``.
            input_flatten: ``(B, S, D)``, levels flattened and concatenated.
            spatial_shapes: ``(L, 2)`` tensor or sequence of ``(H_l, W_l)``.
            padding_mask: optional ``(B, S)`` bool, True where the input is padding.

        Returns:
            ``(B, Lq, D)``.
        """
        shapes = _as_shape_list(spatial_shapes)
        b, lq, _ = query.shape
        s = input_flatten.shape[1]
        if len(shapes) != self.n_levels:
            raise ValueError(f"got {len(shapes)} levels, module was built for {self.n_levels}")

        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, s, self.n_heads, self.value_dim // self.n_heads)
        offsets = self.sampling_offsets(query).view(b, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(b, lq, self.n_heads, self.n_levels * self.n_points)
        weights = softmax_last(weights.float()).view(b, lq, self.n_heads, self.n_levels, self.n_points)

        # offsets are in pixels of each level: divide by (W_l, H_l) to get normalised units
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=query.device)
        locations = (reference_points.float()[:, :, None, :, None, :]
                     + offsets.float() / normaliser[None, None, None, :, None, :])

        # Sample in fp32 even under autocast (as the reference kernels do): bf16 coordinates
        # would quantise positions to ~1/256 of the map and bias the bilinear weights.
        dev = query.device.type
        no_amp = torch.autocast(device_type=dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        with no_amp:  # (the meta device, used to count FLOPs, has no autocast)
            out = multi_scale_deformable_attn(value.float(), shapes, locations, weights)
        return self.output_proj(out.to(value.dtype))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}, value_dim={self.value_dim}")


def reference_points(shapes: Sequence[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Reference points of queries on the grids ``shapes`` (:class:`MSDeformAttn`'s ``ref``): the pixel
    centres of each level, normalised ``(x, y)`` in (0, 1): ``(1, sum H*W, 1, 2)``."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    return torch.cat(refs, 0)[None, :, None, :]
