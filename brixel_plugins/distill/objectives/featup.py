"""FeatUp's JBU training recipe (Fu et al., ICLR 2024, the release's ``train_jbu_upsampler.py``
with ``jbu_upsampler.yaml``): multi-view reconstruction with learned uncertainty, in ChannelNorm
space, on random 30-d projections, plus a sampled CRF term."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...images import resize
from ..components.attention_downsampler import FEATUP as FEATUP_DOWNSAMPLER
from ..components.uncertainty import FEATUP as FEATUP_UNCERTAINTY
from ..registry import MODELS, TRANSFORMS
from .base import DistillObjective


class ViewReconstruction:
    """What FeatUp's multi-view reconstruction needs of an objective (FeatUp's, LoftUp's stage 1): the
    training images at the student size or larger (there is no high-resolution teacher), and maps
    compared through the optional random ``projection``."""

    def check_sizes(self, teacher_size: int, student_size: int) -> None:
        """Training needs images at the student size or larger (no high-resolution teacher);
        validation compares with the backbone at ``student_size * factor``."""
        if teacher_size < student_size:
            raise ValueError(f"{type(self).__name__}: teacher_size ({teacher_size}) must be at least student_size "
                             f"({student_size}): training images arrive at teacher_size")

    def project(self, x: torch.Tensor, proj: Optional[torch.Tensor]) -> torch.Tensor:
        return x.float() if proj is None else self.projection(x, proj)


@MODELS.register_module()
class FeatUpObjective(ViewReconstruction, DistillObjective):
    """``losses``: ``x`` = the batch at ``student_size`` (224 in the release), ``F`` = the
    backbone's last layer, ``S`` = ``feature_space`` (ChannelNorm). For each of ``num_jitters``
    views (the upsampler re-run every view, so its dropout differs):

    1. ``hr = S(upsampler(x, F(x)))`` (B, D, f*h, f*w);
    2. one ``jitter`` view for the batch (``jitter.sample(x)``): ``x_v``, ``hr_v`` = ``jitter.apply`` of
       ``x`` and ``hr`` (the same view);
    3. a fresh ``projection`` P (B, D, 30) with unit columns; ``pred = P(downsampler(hr_v))``,
       ``target = P(S(F(x_v)))`` (B, 30, h, w);
    4. ``loss_rec += uncertainty((pred - target)^2, S(F(x_v))) / num_jitters`` (a learned per-pixel
       log-variance: ``err / (2 sigma^2) + log sigma``);
    5. first view only: ``loss_crf = crf_weight * crf(x, P(hr_v))``. As in the release, the CRF
       pairs the jittered map with the unjittered image's colours (with weight 0.001 this is a
       weak smoothness prior either way).

    The release's TV term has weight 0 and is left out. The learned downsampler and uncertainty
    net are submodules of this objective: they train with the upsampler and sit in checkpoints,
    not in the exported upsampler.

    The upsampler reads the backbone's normalised maps (the interface every consumer feeds it);
    the release feeds it ChannelNorm'd features. Here ChannelNorm is the space the comparison is
    made in: the upsampled map and the targets are both ChannelNorm'd (documented in docs/recipes.md).

    ``val_loss``: MSE in the feature space (deterministic: no views, no projection).

    Args:
        num_jitters: views per step (5).
        jitter: a registered view jitter (``TRANSFORMS``, the interface of
            :class:`~brixel_plugins.distill.components.jitter.ViewJitter`), default FeatUp's
            (:class:`~brixel_plugins.distill.components.jitter.FeatUpJitter`).
        downsampler: a registered learned downsampler (``MODELS``) built with ``dim`` and ``factor``
            (default: the attention downsampler with FeatUp's settings, ``FEATUP``).
        feature_space: a registered map ``(B, D, H, W) -> same`` (``MODELS``).
        projection: a registered random projection (``MODELS``), ``None``: compare all D channels.
        uncertainty: a registered uncertainty weighting (``MODELS``) built with ``dim``, ``None``:
            plain MSE.
        crf: a registered CRF term (``MODELS``) and its weight ``crf_weight`` (0: none).
    """

    def __init__(self, embed_dim: int, factor: int, num_jitters: int = 5, jitter: Optional[dict] = None,
                 downsampler: Optional[dict] = None, feature_space: Optional[dict] = None,
                 projection: Optional[dict] = dict(type="RandomProjection", dim=30),
                 uncertainty: Optional[dict] = dict(type="UncertaintyWeighting", **FEATUP_UNCERTAINTY),
                 crf: Optional[dict] = dict(type="SampledCRFLoss"), crf_weight: float = 0.001):
        super().__init__(embed_dim, factor)
        if int(num_jitters) < 1:
            raise ValueError(f"FeatUpObjective: num_jitters must be >= 1, got {num_jitters!r}")
        self.num_jitters = int(num_jitters)
        self.jitter = TRANSFORMS.build(jitter or dict(type="FeatUpJitter"))
        self.downsampler = MODELS.build(downsampler or dict(type="AttentionDownsampler", **FEATUP_DOWNSAMPLER),
                                        default_args=dict(dim=self.embed_dim, factor=self.factor))
        self.space = MODELS.build(feature_space or dict(type="ChannelNorm"))
        self.projection = MODELS.build(projection) if projection else None
        self.uncertainty = MODELS.build(uncertainty, default_args=dict(dim=self.embed_dim)) if uncertainty else None
        self.crf_weight = float(crf_weight)
        self.crf = MODELS.build(crf) if crf and self.crf_weight else None

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        img = resize(image, distiller.student_size)
        last = distiller.last_layer_map(img)
        rec = crf = None
        for v in range(self.num_jitters):
            hr = self.space(distiller.student(img, image_hr=image, last=last))
            view = self.jitter.sample(img)
            with torch.no_grad():
                target = self.space(distiller.target(self.jitter.apply(img, view)[0]))
            hr_v = self.jitter.apply(hr, view)[0]
            proj = self.projection.sample(*target.shape[:2], device=target.device) if self.projection else None
            err = (self.project(self.downsampler(hr_v), proj) - self.project(target, proj)).square()
            term = self.uncertainty(err, target) if self.uncertainty is not None else err.mean()
            rec = term / self.num_jitters if rec is None else rec + term / self.num_jitters
            if v == 0 and self.crf is not None:
                crf = self.crf_weight * self.crf(img, self.project(hr_v, proj))
        out = {"loss_rec": rec}
        if crf is not None:
            out["loss_crf"] = crf
        return out

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.space(pred) - self.space(target)).square().mean()
