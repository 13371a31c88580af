"""AnyUp's objective (Wimmer et al.): the upsampler's output on a whole image, cut at a local
crop, against the backbone's own features of that crop at high resolution, plus a consistency
term under photometric augmentation and a downsampling term."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ...images import resize
from .. import losses as L
from ..registry import MODELS, TRANSFORMS
from .base import DistillObjective


@MODELS.register_module()
class AnyUpObjective(DistillObjective):
    """For a training image x at ``T = teacher_size`` px, f = ``factor``, p = 16 (the patch):

    - guidance ``g`` = x resized to ``T / f`` px, ``F(g)`` its last layer ((T/f/p)^2 tokens);
    - ``pred`` = the upsampler on (g, F(g)) at its factor: the (T/p)^2 grid of x at full size;
    - ``crops`` local crops per image, ``crop_size`` px (default T / f), patch-aligned (top and left
      multiples of p), each compared with the backbone run on the crop itself (``F(crop)``, the
      high-resolution target) by ``pred`` cut at the crop's token box: ``loss_crop``, Cosine-MSE
      (:func:`~brixel_plugins.distill.losses.cosine_mse`);
    - ``loss_consistency`` (weight ``lambda_consistency``): the upsampler on the ``augment``-ed
      guidance with the SAME features F(g), at the guidance's pixel size, against the clean
      guidance's output there (detached);
    - ``loss_downsample`` (weight ``lambda_downsample``): ``pred`` area-averaged back to F(g)'s grid
      against F(g).

    The release: T = 448, f = 2, 4 crops of 224 px, weights 0.1 and 0.1, its augmentations
    (:class:`~brixel_plugins.distill.components.PhotometricAugment`). Pixels come from the
    guidance (the release's encoder sees the 224 px image). Validation (:meth:`val_loss`) is the
    same Cosine-MSE of one held-out student map against the backbone at ``factor`` x its size.
    """

    def __init__(self, embed_dim: int, factor: int, crops: int = 4, crop_size: Optional[int] = None,
                 lambda_consistency: float = 0.1, lambda_downsample: float = 0.1,
                 augment: Optional[dict] = None):
        super().__init__(embed_dim, factor)
        if int(crops) < 1:
            raise ValueError(f"AnyUpObjective: crops must be >= 1, got {crops!r}")
        if crop_size is not None and (int(crop_size) != crop_size or crop_size < 16 or crop_size % 16):
            raise ValueError(f"AnyUpObjective: crop_size must be a positive multiple of the patch (16 px), "
                             f"got {crop_size!r}")
        self.crops, self.crop_size = int(crops), None if crop_size is None else int(crop_size)
        self.lambda_consistency, self.lambda_downsample = float(lambda_consistency), float(lambda_downsample)
        aug = dict(type="PhotometricAugment") if augment is None else augment
        self.augment = TRANSFORMS.build(aug) if aug else None
        if self.lambda_consistency and self.augment is None:
            raise ValueError("AnyUpObjective: the consistency term (lambda_consistency > 0) needs an augment")

    def sizes(self, teacher_size: int):
        """(guidance px, crop px) for training images of ``teacher_size`` px."""
        return teacher_size // self.factor, self.crop_size or teacher_size // self.factor

    def check_sizes(self, teacher_size: int, student_size: int) -> None:
        super().check_sizes(teacher_size, student_size)
        guidance, crop = self.sizes(teacher_size)
        if teacher_size % (16 * self.factor):
            raise ValueError(f"AnyUpObjective: teacher_size ({teacher_size}) must be a multiple of 16 x the factor "
                             f"({16 * self.factor}): the guidance image at 1/{self.factor} of it needs a whole "
                             f"token grid")
        if crop > teacher_size:
            raise ValueError(f"AnyUpObjective: crop_size ({crop}) is larger than the training images ({teacher_size})")

    def crop_boxes(self, n: int, teacher_size: int, crop: int, device) -> torch.Tensor:
        """(n, crops, 2) token offsets (top, left) of random patch-aligned crops, from the global RNG."""
        slots = (teacher_size - crop) // 16 + 1
        return torch.randint(0, slots, (n, self.crops, 2), device=device)

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = distiller.teacher_size
        guidance_px, crop = self.sizes(size)
        image = resize(image, size)
        guidance = resize(image, guidance_px)
        feats = distiller.last_layer_map(guidance)
        pred = distiller.student(guidance, last=feats)  # (B, D, T/16, T/16)
        b, t = image.shape[0], crop // 16
        boxes = self.crop_boxes(b, size, crop, image.device)
        pix, cut = [], []
        for i in range(b):
            for top, left in boxes[i].tolist():
                pix.append(image[i, :, top * 16:top * 16 + crop, left * 16:left * 16 + crop])
                cut.append(pred[i, :, top:top + t, left:left + t])
        target = distiller.target(torch.stack(pix))
        out = {"loss_crop": L.cosine_mse(torch.stack(cut), target)}
        if self.lambda_consistency:
            hw = tuple(guidance.shape[-2:])
            with torch.no_grad():
                clean = distiller.student(guidance, last=feats, output_size=hw)
            augmented = distiller.student(self.augment(guidance), last=feats, output_size=hw)
            out["loss_consistency"] = self.lambda_consistency * L.cosine_mse(augmented, clean)
        if self.lambda_downsample:
            down = F.interpolate(pred.float(), size=feats.shape[-2:], mode="area")
            out["loss_downsample"] = self.lambda_downsample * L.cosine_mse(down, distiller.target(guidance, feats))
        return out

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return L.cosine_mse(pred, target)
