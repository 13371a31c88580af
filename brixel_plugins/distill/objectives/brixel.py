"""BRIXEL's objective: L1 + lambda_edge * edge + lambda_spectral * spectral against the teacher
(the backbone at ``factor`` x the student resolution)."""
from __future__ import annotations

from typing import Dict

import torch

from ...images import resize
from .. import losses as L
from ..registry import MODELS
from .base import DistillObjective


@MODELS.register_module()
class BrixelObjective(DistillObjective):
    """``losses``: the student sees the image resized (bicubic, antialiased) to ``student_size``,
    the teacher the image at ``student_size * factor``; both maps (B, D, f*h, f*w).

    Terms (returned weighted, as ``loss_l1``, ``loss_edge``, ``loss_spectral``):

    - **L1**: mean |pred - target|.
    - **edge**: project pred and target on the top-``pca_k`` principal directions of the
      batch's teacher tokens, Sobel both (no padding), MSE(gx) + MSE(gy).
    - **spectral**: MSE of the log channel-averaged radial spectra (Hann window, |FFT2|
      ortho, ``spectral_bins`` bins) over the bins from ``int(spectral_min_radius * bins)`` on.

    **Scale-free (default).** A feature map's scale is the backbone's business (a random-init
    ViT with a few dominant directions, another model size, real weights, another model
    family), not the objective's: with raw terms the edge MSE grows with the square of the
    scale while L1 grows linearly, so the same lambdas mean different balances on different
    backbones (on the demo's random-init ViT-S the raw edge term was ~150x the L1 term and the
    model learned edges at the expense of values). Here every term is a ratio against the
    teacher's own size of the same quantity, computed on the batch and detached:

    - L1 / mean |target|: the relative L1 error the held-out table reports (1 = predicting zeros);
    - edge MSE / (mean tgx^2 + mean tgy^2), the teacher's projected-gradient energy
      (0 = the teacher's edges, 1 = a flat map);
    - the spectral term compares log spectra, a ratio already (a common factor cancels; its
      eps is relative to the teacher's spectrum).

    Multiplying pred and target by any constant leaves every term unchanged, so a lambda means
    the same relative weight for any backbone. The spectrum is centred before binning (the
    release's is not: :func:`~brixel_plugins.distill.losses.radial_profile`'s ``shift``) so the kept
    bins are the high frequencies; the PCA is exact on every 3rd token (deterministic).

    **Release (``release=True``)**: the authors' formula exactly: raw L1, raw edge MSE with
    the PCA on a random third of the tokens by randomised low-rank PCA (q = k + 16, 2 power
    iterations), unshifted spectrum, bins from int(0.3 * 24) = 7; lambdas 1.0 and 0.1.
    """

    def __init__(self, embed_dim: int, factor: int, release: bool = False, lambda_l1: float = 1.0,
                 lambda_edge: float = 1.0, lambda_spectral: float = 0.1, pca_k: int = 8,
                 spectral_bins: int = 24, spectral_min_radius: float = 0.3):
        super().__init__(embed_dim, factor)
        self.release = bool(release)
        self.lambda_l1, self.lambda_edge = float(lambda_l1), float(lambda_edge)
        self.lambda_spectral = float(lambda_spectral)
        self.pca_k = int(pca_k)
        self.bins, self.min_radius = int(spectral_bins), float(spectral_min_radius)

    def terms(self, pred: torch.Tensor, target: torch.Tensor, exact_pca: bool = False) -> Dict[str, torch.Tensor]:
        """The weighted terms for pred, target (B, D, H, W); ``exact_pca`` forces the exact PCA
        (validation: no randomness) under ``release``."""
        target = target.detach().float()
        l1 = L.l1_loss(pred, target) if self.release else L.relative_l1(pred, target)
        out = {"loss_l1": self.lambda_l1 * l1}
        if self.lambda_edge:
            basis, mean = (L.release_pca_basis(target, self.pca_k) if self.release and not exact_pca
                           else L.pca_basis(target, self.pca_k))
            out["loss_edge"] = self.lambda_edge * L.edge_loss(pred, target, basis, mean, relative=not self.release)
        if self.lambda_spectral:
            out["loss_spectral"] = self.lambda_spectral * L.spectral_loss(
                pred, target, self.bins, self.min_radius, shift=not self.release, relative_eps=not self.release)
        return out

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        s = distiller.student_size
        target = distiller.target(resize(image, s * self.factor))
        pred = distiller.student(resize(image, s), image_hr=image)
        return self.terms(pred, target)

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training terms, with the exact PCA (the release's randomised one spans nearly the
        same subspace; validation must not depend on the RNG)."""
        return sum(self.terms(pred, target, exact_pca=True).values())
