"""Distillation objectives: BRIXEL (L1 + edge + spectral), LiFT (cosine), multi-view MSE pieces.

All losses take ``pred`` and ``target`` maps of shape (B, D, H, W) and return scalars. They run in
float32 whatever the autocast context, as the release computes its edge term in fp32.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _fp32(*xs: torch.Tensor):
    return tuple(x.float() for x in xs)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |pred - target|."""
    pred, target = _fp32(pred, target)
    return (pred - target).abs().mean()


def pca_basis(target: torch.Tensor, k: int = 8, stride: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` principal directions (D, k) and mean (D,) of the batch's target tokens.

    Every ``stride``-th token, as in the release. The release uses a randomised low-rank PCA
    (q=24) to approximate this subspace; the exact eigendecomposition of the D x D covariance
    is as cheap for D <= 1280, and deterministic, which exact resume needs.
    """
    d = target.shape[1]
    tokens = target.detach().float().permute(0, 2, 3, 1).reshape(-1, d)[::stride]
    mean = tokens.mean(0)
    centred = (tokens - mean).double()
    cov = centred.T @ centred / max(1, centred.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, -k:].flip(1).float(), mean


def sobel(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise Sobel gradients without padding: (B, C, H, W) -> 2 x (B, C, H-2, W-2)."""
    c = x.shape[1]
    kx = _SOBEL_X.to(x).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    ky = _SOBEL_X.T.to(x).reshape(1, 1, 3, 3).expand(c, 1, 3, 3)
    return F.conv2d(x, kx, groups=c), F.conv2d(x, ky, groups=c)


def edge_loss(pred: torch.Tensor, target: torch.Tensor, k: int = 8, stride: int = 3) -> torch.Tensor:
    """MSE of Sobel gradients of pred and target, both projected on the target's top-k PCA."""
    pred, target = _fp32(pred, target)
    basis, mean = pca_basis(target, k, stride)

    def project(x):
        return torch.einsum("bdhw,dk->bkhw", x - mean.view(1, -1, 1, 1), basis)

    pgx, pgy = sobel(project(pred))
    tgx, tgy = sobel(project(target))
    return F.mse_loss(pgx, tgx) + F.mse_loss(pgy, tgy)


def radial_profile(x: torch.Tensor, bins: int = 24, shift: bool = True) -> torch.Tensor:
    """Channel-averaged radial profile of the Hann-windowed |FFT2| (ortho): (B, D, H, W) -> (B, bins).

    With ``shift`` the spectrum is centred first, so the radius is the spatial frequency and the
    outer bins hold the highest frequencies. Without it (the release) the radius is measured
    from the middle of the unshifted array, where the Nyquist frequency sits: its "high" bins
    then hold mid and low frequencies.
    """
    b, d, h, w = x.shape
    win = torch.outer(torch.hann_window(h, periodic=False, device=x.device, dtype=torch.float32),
                      torch.hann_window(w, periodic=False, device=x.device, dtype=torch.float32))
    mag = torch.fft.fft2(x.float() * win, norm="ortho").abs().mean(1)  # (B, H, W), averaged over channels
    if shift:
        mag = torch.fft.fftshift(mag, dim=(-2, -1))
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                            torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
    r = torch.sqrt((yy - h // 2) ** 2 + (xx - w // 2) ** 2)
    idx = (r / r.max() * bins).long().clamp_(max=bins - 1).flatten()
    sums = torch.zeros(b, bins, device=x.device).index_add_(1, idx, mag.flatten(1))
    counts = torch.bincount(idx, minlength=bins).clamp_min(1).float()
    return sums / counts


def spectral_loss(pred: torch.Tensor, target: torch.Tensor, bins: int = 24, min_radius: float = 0.3,
                  shift: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """MSE of log radial spectra over the bins at >= ``min_radius`` of the largest radius."""
    pp = radial_profile(pred, bins, shift)
    pt = radial_profile(target.detach(), bins, shift)
    first = int(math.ceil(min_radius * bins))
    return F.mse_loss(torch.log(pp[:, first:] + eps), torch.log(pt[:, first:] + eps))


class BrixelLoss(nn.Module):
    """L1 + lambda_edge * edge + lambda_spectral * spectral (release lambdas 1.0 and 0.1).

    ``shift_spectrum=False`` reproduces the release's unshifted spectral term.
    Returns the weighted terms by name; their sum is the loss.
    """

    def __init__(self, lambda_edge: float = 1.0, lambda_spectral: float = 0.1, pca_k: int = 8,
                 pca_stride: int = 3, spectral_bins: int = 24, spectral_min_radius: float = 0.3,
                 shift_spectrum: bool = True):
        super().__init__()
        self.lambda_edge = lambda_edge
        self.lambda_spectral = lambda_spectral
        self.pca_k, self.pca_stride = pca_k, pca_stride
        self.bins, self.min_radius, self.shift = spectral_bins, spectral_min_radius, shift_spectrum

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = {"loss_l1": l1_loss(pred, target)}
        if self.lambda_edge:
            out["loss_edge"] = self.lambda_edge * edge_loss(pred, target, self.pca_k, self.pca_stride)
        if self.lambda_spectral:
            out["loss_spectral"] = self.lambda_spectral * spectral_loss(
                pred, target, self.bins, self.min_radius, self.shift)
        return out


def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over pixels of 1 - cos(pred, target) along channels."""
    pred, target = _fp32(pred, target)
    return (1 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()


def lift_loss(preds, targets) -> torch.Tensor:
    """LiFT's multi-scale objective: the sum of cosine distances over the scale pairs."""
    return sum(cosine_distance(p, t) for p, t in zip(preds, targets))


# -- multi-view consistency (FeatUp / FeatSharp) ---------------------------------------------

def random_homographies(n: int, max_zoom: float = 1.8, max_shift: float = 1.0, max_rotate_deg: float = 10.0,
                        max_perspective: float = 0.1, flip: bool = True,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, 3, 3) maps from output to input normalised coordinates ([-1, 1]): a random zoom-in
    (1..max_zoom), crop position inside the image, small rotation, small perspective, flip."""
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    zoom = u(1.0, max_zoom)
    scale = 1.0 / zoom  # output covers 1/zoom of the input
    room = (1 - scale) * max_shift
    tx, ty = u(-1, 1) * room, u(-1, 1) * room
    th = u(-1, 1) * math.radians(max_rotate_deg)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    c, s = torch.cos(th), torch.sin(th)
    m = torch.zeros(n, 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = scale * c * sx, -scale * s, tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = scale * s * sx, scale * c, ty
    m[:, 2, 0], m[:, 2, 1], m[:, 2, 2] = u(-1, 1) * max_perspective, u(-1, 1) * max_perspective, 1.0
    return m


def homography_grid(hmat: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Sampling grid (n, H, W, 2) for ``F.grid_sample`` from (n, 3, 3) output->input maps."""
    h, w = size
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).to(hmat)  # (H, W, 3)
    out = torch.einsum("nij,hwj->nhwi", hmat, pts)
    return out[..., :2] / out[..., 2:].clamp_min(1e-6)


def warp(x: torch.Tensor, hmat: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Apply output->input homographies to a batch at its own resolution (border padding)."""
    grid = homography_grid(hmat.to(x.device), x.shape[-2:])
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode="border", align_corners=False)


def multiview_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred, target = _fp32(pred, target)
    return F.mse_loss(pred, target)
