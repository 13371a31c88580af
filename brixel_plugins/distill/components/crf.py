"""A sampled dense-CRF smoothness term (FeatUp's release, weight 0.001 on the first view)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS

__all__ = ["SampledCRFLoss"]


@MODELS.register_module()
class SampledCRFLoss(nn.Module):
    """``forward(guidance (B, 3, H, W), feats (B, K, h, w)) -> scalar``.

    ``n_samples`` random pixels (the same for the batch); for every pair (i, j) with
    normalised positions p (row / h, col / w) and guidance colours I::

        k_ij = w1 exp(-|p_i - p_j|^2 / (2 alpha) - |I_i - I_j|^2 / (2 beta))
               + w2 exp(-|p_i - p_j|^2 / (2 gamma)) - shift
        loss = mean_ij k_ij |f_i - f_j|^2

    Pixels close in place and colour are pulled to similar features. A guidance image of another
    size than the features is average-pooled to their grid first.
    """

    def __init__(self, n_samples: int = 1000, alpha: float = 0.1, beta: float = 0.15, gamma: float = 0.005,
                 w1: float = 10.0, w2: float = 3.0, shift: float = 0.0):
        super().__init__()
        self.n_samples = int(n_samples)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.w1, self.w2, self.shift = float(w1), float(w2), float(shift)

    def forward(self, guidance: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if guidance.shape[0] != feats.shape[0]:
            raise ValueError(f"SampledCRFLoss: guidance {tuple(guidance.shape)} and features "
                             f"{tuple(feats.shape)} differ in batch size")
        h, w = feats.shape[-2:]
        if guidance.shape[-2:] != (h, w):
            guidance = F.adaptive_avg_pool2d(guidance, (h, w))
        rows = torch.randint(0, h, (self.n_samples,), device=feats.device)
        cols = torch.randint(0, w, (self.n_samples,), device=feats.device)
        pos = torch.stack([rows / h, cols / w])  # (2, n)
        pos_d = (pos[:, :, None] - pos[:, None, :]).square().sum(0)[None]  # (1, n, n)
        g = guidance.float()[:, :, rows, cols]  # (B, 3, n)
        col_d = (g[:, :, :, None] - g[:, :, None, :]).square().sum(1)  # (B, n, n)
        kernel = (self.w1 * torch.exp(-pos_d / (2 * self.alpha) - col_d / (2 * self.beta))
                  + self.w2 * torch.exp(-pos_d / (2 * self.gamma)) - self.shift)
        f = feats.float()[:, :, rows, cols]  # (B, K, n)
        sq = f.square().sum(1)  # |f_i - f_j|^2 = |f_i|^2 + |f_j|^2 - 2 f_i.f_j, without a (B, K, n, n) tensor
        feat_d = (sq[:, :, None] + sq[:, None, :] - 2 * torch.einsum("bkn,bkm->bnm", f, f)).clamp_min(0)
        return (feat_d * kernel).mean()

    def extra_repr(self) -> str:
        return (f"n_samples={self.n_samples}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"w1={self.w1}, w2={self.w2}, shift={self.shift}")
