"""JAFAR's objective (Couairon et al., NeurIPS 2025, the release's ``train.py``): no high-resolution
teacher. The backbone's map of the training image itself is the target, and the upsampler learns
to recover it from the backbone's map of a downscaled copy (low ratios, 2x to 4x)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from ...images import resize
from .. import losses as L
from ..components.attention_downsampler import gaussian_blur
from ..registry import MODELS, TRANSFORMS
from .base import DistillObjective


@MODELS.register_module()
class JafarObjective(DistillObjective):
    """For a batch at ``T = teacher_size`` (448 in the release), ``F`` the backbone's last layer:

    1. ``target = F(x_T)`` (T/16 tokens a side): the backbone at the training image's own size,
       never at a larger one;
    2. one ``s ~ U(low_scale)`` per batch; ``x_low`` = the image at ``s * T`` px, rounded to a
       multiple of 16 (the release: 0.25 to 0.5, so 2x to 4x fewer tokens than the target);
    3. the guidance pixels ``g`` = the image at ``guidance_scale * T`` (0.5: 224 px);
    4. ``loss_main = cosine_mse(up(x_low, F(x_low), pixels g, size of the target), target)``;
    5. ``loss_consistency = lambda_consistency * cosine_mse(up(F(x_T), pixels noisy(g)),
       up(F(x_T), pixels g).detach())``, both at ``consistency_size`` (None: g's size, the release:
       32 tokens to 224 px, 7x): the output must not change when the guidance is blurred or noisy.

    ``noisy`` is the release's ``add_blur_noise``, drawn once per batch: a 5x5 Gaussian blur
    (sigma 1) with probability ``blur_prob``, then ``noise_std`` x N(0, 1) with ``noise_prob``, then
    (``clamp``) a clamp to [0, 1] of the *normalised* pixels (the release does this; it clips
    every value below the channel mean). The release adds the noise in place when it does not
    blur, so its clean branch sees the noise too; here the clean branch is always clean.

    ``val_loss``: ``cosine_mse`` of the student at ``student_size`` against the backbone at
    ``factor`` x, the same function as training.

    Args:
        low_scale: (min, max) of the downscale factor s.
        guidance_scale: the guidance image's size as a fraction of T.
        lambda_consistency: weight of the consistency term (0: not computed).
        consistency_size: the consistency term's output side (px); None: the guidance's side.
        downscale: how ``x_low`` is made, ``(image, size) -> image`` (``TRANSFORMS``; default
            ``AntialiasedResize``, the resize every consumer feeds; the release: bilinear).
    """

    def __init__(self, embed_dim: int, factor: int, low_scale: Sequence[float] = (0.25, 0.5),
                 guidance_scale: float = 0.5, lambda_consistency: float = 0.1, consistency_size: Optional[int] = None,
                 blur_prob: float = 0.5, noise_prob: float = 0.3, noise_std: float = 0.02, clamp: bool = True,
                 downscale: Optional[dict] = None):
        super().__init__(embed_dim, factor)
        lo, hi = (float(s) for s in low_scale)
        if not 0 < lo <= hi < 1:
            raise ValueError(f"JafarObjective: low_scale must be (min, max) with 0 < min <= max < 1, got {low_scale!r}")
        if not 0 < float(guidance_scale) <= 1:
            raise ValueError(f"JafarObjective: guidance_scale must be in (0, 1], got {guidance_scale!r}")
        self.low_scale, self.guidance_scale = (lo, hi), float(guidance_scale)
        self.lambda_consistency = float(lambda_consistency)
        self.consistency_size = None if consistency_size is None else int(consistency_size)
        self.blur_prob, self.noise_prob, self.noise_std = float(blur_prob), float(noise_prob), float(noise_std)
        self.clamp = bool(clamp)
        self.downscale = TRANSFORMS.build(downscale or dict(type="AntialiasedResize"))

    def check_sizes(self, teacher_size: int, student_size: int) -> None:
        super().check_sizes(teacher_size, student_size)
        if self.low_side(teacher_size, self.low_scale[0]) >= teacher_size:
            raise ValueError(f"JafarObjective: teacher_size {teacher_size} px is too small for low_scale "
                             f"{self.low_scale}: the downscaled input must have fewer tokens than the target")

    @staticmethod
    def low_side(teacher_size: int, s: float) -> int:
        """``s * teacher_size`` rounded to a multiple of 16 px, at least one token."""
        return max(16, int(round(s * teacher_size / 16)) * 16)

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) < self.blur_prob:
            x = gaussian_blur(x, 5, 1.0)
        if float(torch.rand(())) < self.noise_prob:
            x = x + self.noise_std * torch.randn_like(x)
        return x.clamp(0, 1) if self.clamp else x

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = distiller.teacher_size
        image = resize(image, size)
        feats = distiller.last_layer_map(image)
        target = distiller.target(image, feats=feats)
        s = self.low_scale[0] + (self.low_scale[1] - self.low_scale[0]) * float(torch.rand(()))
        low = self.downscale(image, self.low_side(size, s))
        guide = resize(image, max(16, int(round(self.guidance_scale * size))))
        pred = distiller.student(low, image_hr=guide, output_size=tuple(target.shape[-2:]))
        out = {"loss_main": L.cosine_mse(pred, target)}
        if self.lambda_consistency:
            side = self.consistency_size or guide.shape[-1]
            with torch.no_grad():
                clean = distiller.student(image, image_hr=guide, last=feats, output_size=(side, side))
            noisy = distiller.student(image, image_hr=self.noisy(guide), last=feats, output_size=(side, side))
            out["loss_consistency"] = self.lambda_consistency * L.cosine_mse(noisy, clean)
        return out

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return L.cosine_mse(pred, target)
