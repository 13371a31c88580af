"""The calibration protocol of upsamplers and distillation objectives: statistics fitted from
backbone features before training or use (FeatSharp's PHI-S).

``calibrated`` (property: False while statistics that must be fitted are missing),
``calibrate(feats)`` (accumulate from backbone last-layer maps (B, D, h, w)) and
``finish_calibration()`` (fit; every process calls it, and statistics are summed over processes
when ``torch.distributed`` is initialised, so every rank fits the same transform). The base class
fits nothing; :class:`~brixel_plugins.upsamplers.layers.phi_s.PhiSCalibration` fits a PHI-S
normaliser.
"""
from __future__ import annotations

import torch

__all__ = ["Calibration"]


class Calibration:
    """The protocol, for a module with nothing to fit: always calibrated. A base class of
    :class:`~brixel_plugins.upsamplers.base.Upsampler` and of the distillation objectives."""

    @property
    def calibrated(self) -> bool:
        """False while statistics that must be fitted from data before use are missing."""
        return True

    def calibrate(self, feats: torch.Tensor) -> None:
        """Accumulate statistics from backbone last-layer maps (B, D, h, w)."""

    def finish_calibration(self) -> None:
        """Fit from the statistics accumulated on every process; afterwards ``calibrated`` is True."""
