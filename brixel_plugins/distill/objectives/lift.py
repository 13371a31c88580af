"""LiFT's objective: cosine distance between the upsampled features of an image and the
backbone's features of the same image at ``factor`` x the resolution, at several scales."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...images import resize
from .. import losses as L
from ..registry import MODELS, TRANSFORMS
from .base import DistillObjective


@MODELS.register_module()
class LiftObjective(DistillObjective):
    """LiFT (Suri et al.): for a training image at ``T = teacher_size`` and ``scales`` pairs,
    pair k (k = 0 .. scales-1) compares ``LiFT(x_{k+1}, F(x_{k+1}))`` with ``F(x_k)``, where
    ``x_k`` is the image at ``T / f^k`` px and F the backbone's last layer; the loss is the sum
    of the pairs' mean cosine distances (``loss_cos_k``). Each resolution runs the backbone once:
    F(x_1) is the input of pair 0 and the target of pair 1. Validation scores one pair
    (student at ``student_size`` vs backbone at ``student_size * f``) with the same cosine
    distance: :meth:`pair_loss` is the one place the loss is computed.

    The release: f = 2, 448 px images, 2 pairs (224 -> 448, 112 -> 224). Cosine distance is
    scale-free by nature (unchanged when either map is multiplied by a positive constant), and
    blind to magnitude: trained on it alone, a zero-start LiFT grows its detail along the
    target's direction without bound (on the demo, held-out cosine up, relative L1 from 0.57 to
    0.87 in 10 steps). ``lambda_l1`` adds the relative L1 error ``mean|pred - target| /
    mean|target|`` (scale-free too) to each pair; 0 (the default) is the release's objective.

    Registered pieces (``TRANSFORMS``), the release's in brackets:

    - ``downscale``: how ``x_k`` is made from the image, ``(image, size) -> image``: default
      ``AntialiasedResize`` (release: ``StridedSubsample``, ``x[:, :, ::2, ::2]`` and ``::4``).
    - ``colour_jitter``: applied to the batch first, ``None`` for none (release:
      ``ColourJitter(0.2, 0.2, 0.2, 0.2)``).
    - ``facet``: the backbone output F, input and target alike, ``(distiller, image) -> map``:
      ``LastLayerTokens`` (release: ``LastBlockKeys``, the last block's attention keys).
    """

    def __init__(self, embed_dim: int, factor: int, scales: int = 2, downscale: Optional[dict] = None,
                 colour_jitter: Optional[dict] = None, facet: Optional[dict] = None, lambda_l1: float = 0.0):
        super().__init__(embed_dim, factor)
        if int(scales) < 1:
            raise ValueError(f"LiftObjective: scales must be >= 1, got {scales!r}")
        self.scales = int(scales)
        self.lambda_l1 = float(lambda_l1)
        self.downscale = TRANSFORMS.build(downscale or dict(type="AntialiasedResize"))
        self.colour_jitter = TRANSFORMS.build(colour_jitter) if colour_jitter else None
        self.facet = TRANSFORMS.build(facet or dict(type="LastLayerTokens"))

    def check_sizes(self, teacher_size: int, student_size: int) -> None:
        super().check_sizes(teacher_size, student_size)
        smallest = teacher_size // self.factor ** self.scales
        if smallest < 16 or teacher_size % (16 * self.factor ** self.scales):
            raise ValueError(f"LiftObjective: {self.scales} scale pairs by {self.factor} below {teacher_size} px "
                             f"need teacher_size to be a multiple of {16 * self.factor ** self.scales} "
                             f"(the smallest input has a token grid)")

    def pair_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = L.cosine_distance(pred, target)
        if self.lambda_l1:
            loss = loss + self.lambda_l1 * L.relative_l1(pred, target)
        return loss

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = distiller.teacher_size
        if self.colour_jitter is not None:
            image = self.colour_jitter(image)
        images = {size: resize(image, size)}
        feats = {size: self.facet(distiller, images[size])}
        out = {}
        for k in range(self.scales):
            small = size // self.factor
            images[small] = self.downscale(images[distiller.teacher_size], small)
            feats[small] = self.facet(distiller, images[small])
            pred = distiller.student(images[small], image_hr=images[size], last=feats[small])
            out[f"loss_cos_{k}"] = self.pair_loss(pred, distiller.target(images[size], feats=feats[size]))
            size = small
        return out

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.pair_loss(pred, target)
