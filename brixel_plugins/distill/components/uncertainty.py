"""Learned per-pixel uncertainty weighting of a regression error (multi-view training).

A small conv net predicts a log-variance map ``s`` (B, 1, h, w) from features; an error map
``err`` (B, K, h, w) (e.g. squared differences) becomes the Gaussian negative log-likelihood

    loss = mean( error_weight * exp(-s) * err + s / 2 )

so pixels the net finds unpredictable (view-dependent, occluded) are down-weighted, at the price
of the ``s / 2`` term. The recipes differ only in the net and the constants:

- FeatUp (JBU release): a 1x1 conv C -> 1 whose initial weights are scaled by 0.1 predicting
  ``log sigma = z + 0.1`` (sigma clamped at 1e-4), loss ``err / (2 sigma^2) + log sigma``:
  ``log_variance_scale=2, offset=0.1, init_scale=0.1, error_weight=0.5, min_log_variance=2 log 1e-4``.
- FeatSharp: a 5x5 conv C -> 256 -> 1 predicting ``s`` directly, loss ``exp(-s) err + s / 2``:
  ``kernel_size=5, hidden=256``, the other constants at their defaults.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..registry import MODELS

__all__ = ["UncertaintyWeighting"]


@MODELS.register_module()
class UncertaintyWeighting(nn.Module):
    """``forward(err (B, K, h, w), feats (B, C, h, w)) -> scalar`` (the mean of ``nll_map``);
    ``log_variance(feats) -> (B, 1, h, w)``.

    Args:
        dim: channels C of the features the uncertainty is predicted from.
        kernel_size: kernel of the net's convs (odd; padded to keep the size).
        hidden: ``None``: one conv C -> 1; an int: conv C -> hidden, ``activation``, conv hidden -> 1.
        activation: between the two convs (``'relu'`` or ``'gelu'``).
        log_variance_scale, offset: ``s = log_variance_scale * (net(feats) + offset)``.
        min_log_variance: ``s`` is clamped from below (``None``: no clamp).
        init_scale: the convs' default initial weights and biases are multiplied by this.
        error_weight: the factor on ``exp(-s) * err``.
    """

    def __init__(self, dim: int, kernel_size: int = 1, hidden: Optional[int] = None, activation: str = "relu",
                 log_variance_scale: float = 1.0, offset: float = 0.0, min_log_variance: Optional[float] = None,
                 init_scale: float = 1.0, error_weight: float = 1.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"UncertaintyWeighting: kernel_size must be odd and >= 1, got {kernel_size}")
        acts = {"relu": nn.ReLU, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"UncertaintyWeighting: activation must be one of {sorted(acts)}, got {activation!r}")
        pad = kernel_size // 2
        if hidden is None:
            self.net = nn.Conv2d(dim, 1, kernel_size, padding=pad)
        else:
            self.net = nn.Sequential(nn.Conv2d(dim, int(hidden), kernel_size, padding=pad), acts[activation](),
                                     nn.Conv2d(int(hidden), 1, kernel_size, padding=pad))
        if init_scale != 1.0:
            with torch.no_grad():
                for p in self.net.parameters():
                    p.mul_(init_scale)
        self.dim = int(dim)
        self.log_variance_scale, self.offset = float(log_variance_scale), float(offset)
        self.min_log_variance = None if min_log_variance is None else float(min_log_variance)
        self.error_weight = float(error_weight)

    @classmethod
    def featup(cls, dim: int) -> "UncertaintyWeighting":
        """FeatUp's ScaleNet and Gaussian likelihood (see the module docstring)."""
        return cls(dim, **FEATUP)

    def log_variance(self, feats: torch.Tensor) -> torch.Tensor:
        """s (B, 1, h, w), in float32."""
        s = self.log_variance_scale * (self.net(feats.float()) + self.offset)
        return s if self.min_log_variance is None else s.clamp_min(self.min_log_variance)

    def nll_map(self, err: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The per-pixel loss ``error_weight * exp(-s) * err + s / 2`` (B, K, h, w), float32, for
        objectives that weight or sum it themselves (FeatSharp: validity and seam weights)."""
        if err.shape[0] != feats.shape[0] or err.shape[-2:] != feats.shape[-2:]:
            raise ValueError(f"UncertaintyWeighting: error map {tuple(err.shape)} and features "
                             f"{tuple(feats.shape)} must share batch and spatial size")
        s = self.log_variance(feats)
        return self.error_weight * torch.exp(-s) * err.float() + s / 2

    def forward(self, err: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.nll_map(err, feats).mean()

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, log_variance_scale={self.log_variance_scale}, offset={self.offset}, "
                f"min_log_variance={self.min_log_variance}, error_weight={self.error_weight}")


# FeatUp's constants (ScaleNet: sigma = exp(conv1x1(x) + 0.1) >= 1e-4, loss err / (2 sigma^2) + log sigma)
FEATUP = dict(kernel_size=1, hidden=None, log_variance_scale=2.0, offset=0.1,
              min_log_variance=2 * math.log(1e-4), init_scale=0.1, error_weight=0.5)
