"""FeatSharp's multi-view consistency objective, as released: real high-resolution pixels for the
student, a main view plus jittered views with validity masks, a learned attention downsampler,
tile-seam weighting and a learned uncertainty."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ...upsamplers.featsharp import low_res_view
from ..components.attention_downsampler import FEATSHARP
from ..registry import MODELS
from .multiview import MultiViewObjective

__all__ = ["FeatSharpObjective", "seam_weights"]


def seam_weights(h: int, w: int, factor: int, weight: float = 2.0, band: int = 2) -> torch.Tensor:
    """(1, 1, f*h, f*w): ``weight`` on the ``band`` high-res pixels straddling each border between
    the f x f tiles (half each side), 1 elsewhere."""
    def axis(n: int) -> torch.Tensor:
        idx = torch.arange(factor * n)
        near = torch.zeros(factor * n, dtype=torch.bool)
        for k in range(1, factor):
            near |= (idx >= k * n - band // 2) & (idx < k * n + band - band // 2)
        return near

    near = axis(h)[:, None] | axis(w)[None, :]
    return torch.where(near, float(weight), 1.0)[None, None]


@MODELS.register_module()
class FeatSharpObjective(MultiViewObjective):
    """One training step on images (B, 3, T, T), T >= ``factor * student_size`` = u*R:

    1. ``big`` = the jitter's shared zoom-in and crop of each image at u*R (the real pixels the
       tiles are cut from); the student runs on ``low = big`` resized bilinearly (no
       antialias) to R, with ``image_hr=big``: ``hr`` (B, C, u*h, u*w).
    2. For the main view (identity) and ``num_jitters`` jittered views (homography H):
       ``pred = downsampler(warp(PHI-S(hr), H))`` (B, C, h, w); ``target = PHI-S(target(
       low_res_view(warp(big, H))))``, i.e. the backbone on the jittered picture downsampled
       bilinearly, through the upsampler's ``target_transform`` (FeatSharp: + the de-bias map);
       per pixel ``err`` = mean over channels of (pred - target)^2.
    3. ``loss_mv`` = mean over views of ``sum(m * seam * (exp(-s) * err + s / 2)) / sum(m)``, with
       ``m`` the validity mask (the share of the cell whose warped source lies inside the
       picture), ``seam`` :func:`seam_weights` (2.0 on 2-px bands at the tile borders, warped
       like the features and average-pooled to the cell) and ``s`` the log-variance the
       ``uncertainty`` component predicts from the target features.

    PHI-S here is the objective's own (:class:`MultiViewObjective`'s, always on), fitted by the
    calibration pass from the same features as the upsampler's (a rotation and one scale: the
    loss is the feature-space MSE in units of the features' mean channel variance). ``val_loss``
    is the plain MSE in that space.

    Args:
        num_jitters: jittered views besides the main view (5 as released).
        jitter: a ``TRANSFORMS`` config of a homography jitter with a ``shared_view``, default
            :class:`~brixel_plugins.distill.components.homography.FeatSharpJitter` (release values).
        downsampler: a ``MODELS`` config built with ``dim`` and ``factor``; default FeatSharp's
            attention downsampler (``FEATSHARP``: 9x9 window, padding 4, 5x5 Gaussian blur, 20%
            logit dropout).
        uncertainty: a ``MODELS`` config built with ``dim``; default a 5x5 conv net C -> 256 -> 1.
            ``None`` turns the uncertainty off (err weighted as is).
        seam_weight, seam_band: the tile-border weighting (2.0 on 2-px bands).
    """

    default_jitter = dict(type="FeatSharpJitter")
    default_downsampler = dict(type="AttentionDownsampler", **FEATSHARP)
    min_jitters = 0  # the main view is always compared

    def __init__(self, embed_dim: int, factor: int, num_jitters: int = 5, jitter: Optional[dict] = None,
                 downsampler: Optional[dict] = None, uncertainty: Optional[dict] = dict(type="UncertaintyWeighting",
                                                                                       kernel_size=5, hidden=256),
                 seam_weight: float = 2.0, seam_band: int = 2):
        super().__init__(embed_dim, factor, num_jitters, jitter, downsampler, phi_s=True)
        self.uncertainty = None if uncertainty is None else MODELS.build(uncertainty,
                                                                         default_args=dict(dim=self.embed_dim))
        self.seam_weight, self.seam_band = float(seam_weight), int(seam_band)

    def view_loss(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                  seam: torch.Tensor) -> torch.Tensor:
        """pred, target (B, C, h, w); valid, seam (B, 1, h, w) -> the weighted loss of one view."""
        # the target is not detached: it carries the upsampler's learned correction (FeatSharp's
        # de-bias map), which learns from the targets (the backbone's fixed pattern does not move
        # with the views, so only a correction of the targets can explain it away)
        err = (pred - target).square().mean(1, keepdim=True)
        if self.uncertainty is not None:
            err = self.uncertainty.nll_map(err, target.detach())
        return (valid * seam * err).sum() / valid.sum().clamp_min(1.0)

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        r, u = distiller.student_size, self.factor
        big = self.jitter.shared_view(image, u * r)
        low = low_res_view(big, (r, r))
        hr = self.loss_space(distiller.student(low, image_hr=big))
        b, _, hh, ww = hr.shape
        seam = seam_weights(hh // u, ww // u, u, self.seam_weight, self.seam_band).to(hr).expand(b, 1, hh, ww)
        identity = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
        total = hr.new_zeros(())
        for k in range(1 + self.num_jitters):
            hmat = identity if k == 0 else self.jitter.sample(big)
            view, _ = self.jitter.apply(big, hmat)
            target = self.loss_space(distiller.target(low_res_view(view, (r, r))))
            warped, valid = self.jitter.apply(torch.cat([hr, seam], dim=1), hmat)
            pred = self.downsampler(warped[:, :-1])
            cell_valid = F.avg_pool2d(valid, u)
            cell_seam = F.avg_pool2d(warped[:, -1:] * valid, u) / cell_valid.clamp_min(1e-6)
            total = total + self.view_loss(pred, target, cell_valid, cell_seam)
        return {"loss_mv": total / (1 + self.num_jitters)}
