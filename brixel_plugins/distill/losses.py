"""Loss terms the distillation objectives (:mod:`brixel_plugins.distill.objectives`) are built from.

Every term takes ``pred`` and ``target`` maps of shape (B, D, H, W) and returns a scalar, in
float32 whatever the autocast context (the BRIXEL release computes its edge term in fp32).
Targets never receive gradients: each term detaches what it derives from the target.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _fp32(*xs: torch.Tensor):
    return tuple(x.float() for x in xs)


# -- BRIXEL: L1, edge, spectral ------------------------------------------------------------------

def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |pred - target|."""
    pred, target = _fp32(pred, target)
    return (pred - target).abs().mean()


def relative_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |pred - target| / mean |target| (target detached): unchanged when both are scaled."""
    target = target.detach().float()
    return l1_loss(pred, target) / target.abs().mean().clamp_min(1e-12)


def pca_basis(target: torch.Tensor, k: int = 8, stride: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` principal directions (D, k) and mean (D,) of every ``stride``-th target token.

    Exact (eigendecomposition of the D x D covariance: as cheap as a low-rank approximation for
    D <= 1280) and deterministic. The edge term depends only on the spanned subspace.
    """
    d = target.shape[1]
    tokens = target.detach().float().permute(0, 2, 3, 1).reshape(-1, d)[::stride]
    mean = tokens.mean(0)
    centred = (tokens - mean).double()
    cov = centred.T @ centred / max(1, centred.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, -k:].flip(1).float(), mean


def release_pca_basis(target: torch.Tensor, k: int = 8, oversample: int = 16,
                      niter: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """The release's PCA: a random third of the target tokens (shuffled, then every 3rd),
    randomised low-rank PCA with q = k + ``oversample`` and ``niter`` power iterations, top ``k``.
    Uses the global torch RNG (re-seeded per training step, so runs stay reproducible)."""
    d = target.shape[1]
    tokens = target.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
    tokens = tokens[torch.randperm(tokens.shape[0], device=tokens.device)][::3]
    mean = tokens.mean(0)
    q = min(k + oversample, *tokens.shape)
    _, _, v = torch.pca_lowrank(tokens, q=q, center=True, niter=niter)
    return v[:, :k], mean


def sobel(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise Sobel gradients without padding: (B, C, H, W) -> 2 x (B, C, H-2, W-2)."""
    c = x.shape[1]
    kx = _SOBEL_X.to(x).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    ky = _SOBEL_X.T.to(x).reshape(1, 1, 3, 3).expand(c, 1, 3, 3)
    return F.conv2d(x, kx, groups=c), F.conv2d(x, ky, groups=c)


def project(x: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, k, H, W): coordinates of ``x - mean`` in the (D, k) basis."""
    return torch.einsum("bdhw,dk->bkhw", x - mean.view(1, -1, 1, 1), basis)


def edge_loss(pred: torch.Tensor, target: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor,
              relative: bool = False) -> torch.Tensor:
    """MSE(gx) + MSE(gy) of the Sobel gradients of pred and target projected on ``basis``.

    ``relative``: divided by the target's own projected-gradient energy mean(tgx^2) + mean(tgy^2)
    (detached), so the term is 0 for a perfect prediction and 1 for a flat one, whatever the
    features' scale.
    """
    pred, target = _fp32(pred, target)
    pgx, pgy = sobel(project(pred, basis, mean))
    tgx, tgy = sobel(project(target.detach(), basis, mean))
    err = F.mse_loss(pgx, tgx) + F.mse_loss(pgy, tgy)
    if not relative:
        return err
    energy = tgx.square().mean() + tgy.square().mean()
    return err / energy.clamp_min(1e-12)


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


def first_high_bin(bins: int, min_radius: float) -> int:
    """Index of the first kept bin: int(min_radius * bins), floored as in the release (7 of 24)."""
    return int(min_radius * bins)


def spectral_loss(pred: torch.Tensor, target: torch.Tensor, bins: int = 24, min_radius: float = 0.3,
                  shift: bool = True, eps: float = 1e-8, relative_eps: bool = False) -> torch.Tensor:
    """MSE of log radial spectra over the bins from :func:`first_high_bin` on: a log ratio, so
    multiplying both maps by a constant leaves it unchanged up to ``eps`` (exactly, with
    ``relative_eps``: eps times the target profile's mean)."""
    pp = radial_profile(pred, bins, shift)
    pt = radial_profile(target.detach(), bins, shift)
    first = first_high_bin(bins, min_radius)
    if relative_eps:
        eps = eps * pt.mean().clamp_min(1e-30)
    return F.mse_loss(torch.log(pp[:, first:] + eps), torch.log(pt[:, first:] + eps))


# -- LiFT ----------------------------------------------------------------------------------------

def cosine_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over pixels of 1 - cos(pred, target) along channels."""
    pred, target = _fp32(pred, target)
    return (1 - F.cosine_similarity(pred, target.detach(), dim=1, eps=1e-8)).mean()


def cosine_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AnyUp's and JAFAR's ``Cosine_MSE``: the cosine distance plus the MSE of both maps rescaled per pixel by
    the target's range over channels, ``(x - m) / (M - m + 1e-6)`` with m, M the target's min and
    max: a magnitude term that is as scale-free as the cosine."""
    pred, target = _fp32(pred, target.detach())
    lo, hi = target.amin(dim=1, keepdim=True), target.amax(dim=1, keepdim=True)
    span = hi - lo + 1e-6
    return cosine_distance(pred, target) + F.mse_loss((pred - lo) / span, (target - lo) / span)


# -- multi-view consistency (FeatUp / FeatSharp; the views: components/homography.py) ------------

def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean (pred - target)^2 in float32."""
    pred, target = _fp32(pred, target)
    return F.mse_loss(pred, target.detach())
