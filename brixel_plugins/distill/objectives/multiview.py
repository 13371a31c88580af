"""Multi-view consistency (FeatUp; FeatSharp's training): the upsampled map, warped like a
jittered view of the image and pooled back to the token grid by a learned downsampler, must
match the backbone's features of that view."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...images import resize
from ...ops.attention_downsampler import AttentionDownsampler
from ...ops.phi_s import PhiS
from .. import losses as L
from ..registry import MODELS, TRANSFORMS
from .base import DistillObjective

MODELS.register_module(module=AttentionDownsampler)


@TRANSFORMS.register_module()
class HomographyJitter:
    """Random views: ``jitter(n) -> (n, 3, 3)`` output->input homographies in normalised
    coordinates: zoom-in 1..``max_zoom``, a crop position inside the image (``max_shift`` of the
    room left), rotation within +-``max_rotate_deg``, perspective within +-``max_perspective``,
    optional horizontal flip. Draws from the global torch RNG (re-seeded every training step)."""

    def __init__(self, max_zoom: float = 1.8, max_shift: float = 1.0, max_rotate_deg: float = 10.0,
                 max_perspective: float = 0.1, flip: bool = True):
        self.kw = dict(max_zoom=float(max_zoom), max_shift=float(max_shift), max_rotate_deg=float(max_rotate_deg),
                       max_perspective=float(max_perspective), flip=bool(flip))

    def __call__(self, n: int) -> torch.Tensor:
        return L.random_homographies(n, **self.kw)

    def __repr__(self) -> str:
        return f"HomographyJitter({', '.join(f'{k}={v}' for k, v in self.kw.items())})"


@MODELS.register_module()
class MultiViewObjective(DistillObjective):
    """``losses``: the image at ``student_size`` is upsampled once, ``hr`` (B, D, f*h, f*w). For
    each of ``num_jitters`` random views (homography H): ``pred = downsampler(warp(hr, H))``
    (B, D, h, w) and ``target = target(warp(image, H))`` (the backbone on the jittered view);
    the loss ``loss_mv`` is the mean over views of MSE(pred, target), compared in PHI-S space.

    Args:
        num_jitters: views per image.
        jitter: a registered view sampler (``TRANSFORMS``), default :class:`HomographyJitter`.
        downsampler: a registered learned downsampler (``MODELS``) built with ``dim`` and
            ``factor``, default the attention downsampler (at init exactly average pooling).
        phi_s: compare maps after PHI-S standardisation, fitted before training by the
            calibration pass (``PhiSStatsHook``). PHI-S is a rotation times one scalar alpha,
            so the MSE there is the feature-space MSE divided by the features' mean channel
            variance: the loss is scale-free, its size independent of the backbone's scale.
            ``phi_s=False`` compares raw features (the loss then scales with the features).

    ``val_loss`` (held-out, against the backbone at f x the student resolution): the MSE in
    the same space, without views (deterministic).
    """

    def __init__(self, embed_dim: int, factor: int, num_jitters: int = 5, jitter: Optional[dict] = None,
                 downsampler: Optional[dict] = None, phi_s: bool = True):
        super().__init__(embed_dim, factor)
        if int(num_jitters) < 1:
            raise ValueError(f"MultiViewObjective: num_jitters must be >= 1, got {num_jitters!r}")
        self.num_jitters = int(num_jitters)
        self.jitter = TRANSFORMS.build(dict(type="HomographyJitter", **(jitter or {})) if not (jitter or {}).get("type")
                                       else jitter)
        down = dict(type="AttentionDownsampler", **(downsampler or {})) if not (downsampler or {}).get("type") \
            else dict(downsampler)
        self.downsampler = MODELS.build(down, default_args=dict(dim=self.embed_dim, factor=self.factor))
        self.phi_s = PhiS(self.embed_dim) if phi_s else None

    # -- the space maps are compared in ------------------------------------------------------
    def loss_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.phi_s(x.float()) if self.phi_s is not None else x

    @property
    def calibrated(self) -> bool:
        return self.phi_s is None or self.phi_s.calibrated

    def calibrate(self, feats: torch.Tensor) -> None:
        if self.phi_s is not None:
            self.phi_s.calibrate(feats)

    def finish_calibration(self) -> None:
        if self.phi_s is not None:
            self.phi_s.finish_calibration()

    # -- training and validation -------------------------------------------------------------
    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        img = resize(image, distiller.student_size)
        hr = self.loss_space(distiller.student(img, image_hr=image))
        total = hr.new_zeros(())
        for _ in range(self.num_jitters):
            hmat = self.jitter(img.shape[0]).to(img.device)
            target = self.loss_space(distiller.target(L.warp(img, hmat)))
            pred = self.downsampler(L.warp(hr, hmat))
            total = total + L.mse(pred, target)
        return {"loss_mv": total / self.num_jitters}

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return L.mse(self.loss_space(pred), self.loss_space(target))
