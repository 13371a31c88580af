"""FLOP counting: :func:`count_flops` runs a callable once under
:class:`torch.utils.flop_counter.FlopCounterMode`, so the number is a property of the model and
the input size, not of the machine.

Conventions:

- A multiply-add is **2 FLOPs** (matmul, convolution, attention). Many papers and tools (fvcore,
  thop, ptflops) report MACs (multiply-adds) and call them FLOPs: divide by 2 to compare.
- Counted by torch: mm/addmm/bmm/baddbmm (Linear, einsum, matmul), convolutions (transposed
  too) and the CUDA attention kernels (flash / efficient / cuDNN).
- Added here (:data:`EXTRA_FLOPS`), because they matter for these models and torch does not
  count them: the in-place ``addmm_`` / ``baddbmm_`` (counted like ``addmm`` / ``baddbmm``), CPU fused
  attention (without it a CPU run would miss all of DINOv3's attention),
  bilinear / bicubic interpolation (2 FLOPs per tap per output value; antialiased downsampling
  has more taps, so that is a lower bound) and ``grid_sample`` (bilinear: 4 taps, the sampling
  of deformable attention).
- Not counted (small next to the above for every model here): elementwise ops (add, mul,
  activations, RoPE), normalisations, softmax outside fused attention, pooling, padding,
  indexing and copies.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import torch


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """Fused attention: QK^T (B*H*L*S*E MACs) + AV (B*H*L*S*Ev MACs), 2 FLOPs per MAC.
    Same formula torch uses for its CUDA kernels; softmax not counted."""
    b, h, l, e = q
    s, ev = k[-2], v[-1]
    return 2 * b * h * l * s * e + 2 * b * h * l * s * ev


def matmul_add_flops(acc, a, b, *args, out_shape=None, **kwargs) -> int:
    """``acc += a @ b`` (in place, batched or not): 2 FLOPs per multiply-add, as torch counts addmm."""
    return 2 * math.prod(a) * b[-1]


def _taps(n: int) -> Callable:
    def count(*args, out_shape=None, **kwargs) -> int:
        # A weighted sum of n input values per output value: n multiply-adds.
        return 2 * n * _numel(out_shape)

    count.__doc__ = f"{n}-tap interpolation: 2 * {n} FLOPs per output value."
    return count


def _extra_flops() -> Dict[Any, Callable]:
    from torch.utils.flop_counter import flop_registry

    table = {
        "_scaled_dot_product_flash_attention_for_cpu": sdpa_cpu_flops,
        "upsample_bilinear2d": _taps(4),
        "_upsample_bilinear2d_aa": _taps(4),
        "upsample_bicubic2d": _taps(16),
        "_upsample_bicubic2d_aa": _taps(16),
        "grid_sampler_2d": _taps(4),
        # in-place matrix multiply-adds (a projection written onto a residual): torch counts addmm
        # and baddbmm but not their in-place forms, which would drop a whole projection's FLOPs
        "addmm_": matmul_add_flops,
        "baddbmm_": matmul_add_flops,
    }
    out = {}
    for name, fn in table.items():  # only ops this torch build has; never override torch's own counts
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            out[op] = fn
    return out


EXTRA_FLOPS = _extra_flops()


@dataclass
class FlopCount:
    total: int
    by_module: Dict[str, int]
    by_op: Dict[str, int]

    def in_backbone(self, prefix: str = "DenseFeaturizer.backbone.model") -> int:
        """FLOPs inside the timm model's top-level submodules (patch_embed, blocks.N, norm).

        Summed over those children rather than read at ``prefix``: FrozenDINOv3 reaches the timm
        model through ``forward_intermediates``, which fires no module hooks, so only the
        children carry names (and FeatSharp / highres call it from the upsampler).
        """
        top = re.compile(re.escape(prefix) + r"\.(blocks\.\d+|[^.]+)$")
        return sum(n for k, n in self.by_module.items() if top.match(k) and k != prefix + ".blocks")


def count_flops(fn: Callable[[], Any]) -> Tuple[Any, FlopCount]:
    """Run ``fn()`` once under FlopCounterMode (+ :data:`EXTRA_FLOPS`); return its output and counts."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    with mode:
        out = fn()
    counts = mode.get_flop_counts()
    by_module = {k: int(sum(v.values())) for k, v in counts.items()}
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    return out, FlopCount(int(mode.get_total_flops()), by_module, by_op)
