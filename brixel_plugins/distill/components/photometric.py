"""AnyUp's photometric augmentations of the guidance image (its consistency term): a normalised
batch in, the same pictures with their colours, sharpness and noise changed, the geometry untouched
(the features they are upsampled with stay those of the clean image)."""
from __future__ import annotations

import torch
import torchvision.transforms.v2 as T

from ...backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from ..registry import TRANSFORMS

__all__ = ["PhotometricAugment"]


@TRANSFORMS.register_module()
class PhotometricAugment:
    """``augment(image (B, 3, H, W) ImageNet-normalised) -> same shape``, one random draw per image,
    in this order: ColorJitter(0.2, 0.2, 0.3, 0.05), torchvision's RandomPhotometricDistort, grayscale
    (``p_gray``), Gaussian blur 5x5 with sigma in [0.3, 1.5], JPEG at a quality from {95, 80, 60, 40},
    autocontrast, equalize, sharpness x2, posterize to 4 bits, solarize at half range, invert, then
    Gaussian noise of sigma 0.03 on 0..1 pixels (``p_noise``). The release lists these operations;
    each without a probability of its own is applied with ``p`` (``p_rare`` for invert, solarize
    and posterize, which change a picture most). Draws from the global torch RNG (re-seeded every
    training step, so a resumed run augments the same way)."""

    def __init__(self, p: float = 0.2, p_rare: float = 0.05, p_gray: float = 0.1, p_noise: float = 0.6,
                 noise_sigma: float = 0.03):
        for name, v in dict(p=p, p_rare=p_rare, p_gray=p_gray, p_noise=p_noise).items():
            if not 0 <= float(v) <= 1:
                raise ValueError(f"PhotometricAugment: {name} must be a probability in [0, 1], got {v!r}")
        self.p_noise, self.noise_sigma = float(p_noise), float(noise_sigma)
        self.pipeline = T.Compose([
            T.RandomApply([T.ColorJitter(0.2, 0.2, 0.3, 0.05)], p=p),
            T.RandomApply([T.RandomPhotometricDistort(p=1.0)], p=p),
            T.RandomGrayscale(p=p_gray),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.3, 1.5))], p=p),
            T.RandomApply([T.RandomChoice([T.JPEG(q) for q in (95, 80, 60, 40)])], p=p),
            T.RandomAutocontrast(p=p),
            T.RandomEqualize(p=p),
            T.RandomAdjustSharpness(2.0, p=p),
            T.RandomPosterize(4, p=p_rare),
            T.RandomSolarize(128, p=p_rare),
            T.RandomInvert(p=p_rare),
        ])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
        # uint8, as the release's PIL pipeline sees them (JPEG, equalize and posterize need it)
        pixels = ((image.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        out = torch.stack([self.pipeline(p.cpu()) for p in pixels]).to(image.device).float() / 255
        noisy = torch.rand(out.shape[0], 1, 1, 1, device=out.device) < self.p_noise
        out = torch.where(noisy, (out + self.noise_sigma * torch.randn_like(out)).clamp(0, 1), out)
        return ((out - mean) / std).to(image.dtype)

    def __repr__(self) -> str:
        return f"PhotometricAugment({self.pipeline})"
