"""Finite-value checks shared by weight files (io), checkpoints and training (engine)."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch


def first_non_finite(tensors: Iterable[Tuple[str, torch.Tensor]]) -> Optional[Tuple[str, int, int]]:
    """(name, non-finite count, size) of the first floating-point tensor holding NaN/Inf, or None."""
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                return name, bad, t.numel()
    return None
