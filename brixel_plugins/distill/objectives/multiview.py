"""Multi-view consistency (FeatUp; FeatSharp's training): the upsampled map, warped like a
jittered view of the image and pooled back to the token grid by a learned downsampler, must
match the backbone's features of that view."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...images import resize
from ...upsamplers.layers.phi_s import PhiS, PhiSCalibration
from .. import losses as L
from ..registry import MODELS, TRANSFORMS
from .base import DistillObjective


def _with_default(cfg: Optional[dict], default: dict) -> dict:
    """A component config: ``cfg`` if it names a ``type``, else ``default`` updated with it."""
    cfg = dict(cfg or {})
    return cfg if cfg.get("type") else {**default, **cfg}


@MODELS.register_module()
class MultiViewObjective(PhiSCalibration, DistillObjective):
    """``losses``: the image at ``student_size`` is upsampled once, ``hr`` (B, D, f*h, f*w). For
    each of ``num_jitters`` random views V (by default homographies): ``pred = downsampler(V(hr))``
    (B, D, h, w) and ``target = target(V(image))`` (the backbone on the jittered view);
    the loss ``loss_mv`` is the mean over views of MSE(pred, target), compared in PHI-S space.

    Args:
        num_jitters: views per image.
        jitter: a registered view jitter (``TRANSFORMS``, the interface of
            :class:`~brixel_plugins.distill.components.jitter.ViewJitter`), default
            :class:`~brixel_plugins.distill.components.homography.HomographyJitter`;
            a dict without ``type`` sets options of the default.
        downsampler: a registered learned downsampler (``MODELS``) built with ``dim`` and
            ``factor``, default the attention downsampler (at init exactly average pooling);
            a dict without ``type`` sets options of the default.
        phi_s: compare maps after PHI-S standardisation, fitted before training by the
            calibration pass (``PhiSStatsHook``). PHI-S is a rotation times one scalar alpha,
            so the MSE there is the feature-space MSE divided by the features' mean channel
            variance: the loss is scale-free, its size independent of the backbone's scale.
            ``phi_s=False`` compares raw features (the loss then scales with the features).

    ``val_loss`` (held-out, against the backbone at f x the student resolution): the MSE in
    the same space, without views (deterministic).
    """

    default_jitter = dict(type="HomographyJitter")
    default_downsampler = dict(type="AttentionDownsampler")
    min_jitters = 1

    def __init__(self, embed_dim: int, factor: int, num_jitters: int = 5, jitter: Optional[dict] = None,
                 downsampler: Optional[dict] = None, phi_s: bool = True):
        super().__init__(embed_dim, factor)
        if int(num_jitters) < self.min_jitters:
            raise ValueError(f"{type(self).__name__}: num_jitters must be >= {self.min_jitters}, got {num_jitters!r}")
        self.num_jitters = int(num_jitters)
        self.jitter = TRANSFORMS.build(_with_default(jitter, self.default_jitter))
        self.downsampler = MODELS.build(_with_default(downsampler, self.default_downsampler),
                                        default_args=dict(dim=self.embed_dim, factor=self.factor))
        self.phi_s = PhiS(self.embed_dim) if phi_s else None

    def loss_space(self, x: torch.Tensor) -> torch.Tensor:
        """The space maps are compared in: PHI-S (float32), or the features as they are."""
        return self.phi_s(x.float()) if self.phi_s is not None else x

    # -- training and validation -------------------------------------------------------------
    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        img = resize(image, distiller.student_size)
        hr = self.loss_space(distiller.student(img, image_hr=image))
        total = hr.new_zeros(())
        for _ in range(self.num_jitters):
            view = self.jitter.sample(img)
            target = self.loss_space(distiller.target(self.jitter.apply(img, view)[0]))
            pred = self.downsampler(self.jitter.apply(hr, view)[0])
            total = total + L.mse(pred, target)
        return {"loss_mv": total / self.num_jitters}

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return L.mse(self.loss_space(pred), self.loss_space(target))
