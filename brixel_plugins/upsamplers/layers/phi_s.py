"""PHI-S: PCA-Hadamard isotropic standardisation of feature channels (used by FeatSharp).

Fitted once from data: mean mu and the unbiased covariance Sigma = V diag(lambda) V^T
(float64 streaming sums, divided by n - 1; ``eigh``). Then ``x' = alpha * R (x - mu)`` with
``R = H V^T``, ``alpha = 1/sqrt(mean lambda)``.
Rotating the PCA basis by a normalised Hadamard matrix H (entries +-1/sqrt(C)) gives every
output channel the same variance mean(lambda): cov(x') = alpha^2 H diag(lambda) H^T has unit
diagonal. The transform is orthogonal up to the scalar alpha, hence exactly invertible.

Normalised Hadamard matrices exist only for C = 1, 2 or a multiple of 4, and we construct them
for powers of two times a Paley order (Sylvester doubling; Paley I for q+1, Paley II for 2(q+1),
q prime): this covers every DINOv3 width (384 = 383+1, 768 = 2*384, 1024, 1280 = 1279+1, 4096).
For any other C (no Hadamard matrix, or none we can build) H is replaced by an orthogonal Q
built from C-1 Givens rotations so that Q diag(lambda) Q^T has constant diagonal mean(lambda)
(Schur-Horn; exact, data-dependent). The invariant is the same: orthogonal, equal per-channel
variance, and ``inverse(forward(x)) == x``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .calibration import Calibration

__all__ = ["PhiS", "PhiSCalibration", "hadamard", "equal_diagonal_rotation"]


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = Legendre symbol ((j - i) mod q | q) for prime q: (q, q) of 0/+-1, float64."""
    squares = torch.zeros(q, dtype=torch.float64)
    for x in range(1, q):
        squares[x * x % q] = 1.0
    chi = torch.where(squares > 0, 1.0, -1.0).to(torch.float64)
    chi[0] = 0.0
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(n: int) -> Optional[torch.Tensor]:
    """An unnormalised +-1 Hadamard matrix of order n by Paley I or II, or None."""
    q = n - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: H = I + [[0, 1^T], [-1, Q]]
        s = torch.zeros(n, n, dtype=torch.float64)
        s[0, 1:] = 1.0
        s[1:, 0] = -1.0
        s[1:, 1:] = _jacobsthal(q)
        return torch.eye(n, dtype=torch.float64) + s
    if n % 2 == 0:
        q = n // 2 - 1
        if _is_prime(q) and q % 4 == 1:  # Paley II from the symmetric conference matrix
            c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            c[0, 1:] = 1.0
            c[1:, 0] = 1.0
            c[1:, 1:] = _jacobsthal(q)
            a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


def _hadamard_pm1(n: int) -> Optional[torch.Tensor]:
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if n == 2:
        return torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    if n % 4:
        return None
    h = _paley(n)
    if h is None:
        half = _hadamard_pm1(n // 2)
        if half is not None:
            h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), half)
    return h


def hadamard(n: int) -> Optional[torch.Tensor]:
    """Normalised Hadamard matrix (n, n) float64 (orthogonal, entries +-1/sqrt(n)), or None if
    this construction has none for ``n`` (always None unless n is 1, 2 or a multiple of 4)."""
    h = _hadamard_pm1(int(n))
    if h is None:
        return None
    h = h / math.sqrt(n)
    # every construction above is exact; the check guards against a wrong one silently breaking PHI-S
    if not torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-9):
        raise AssertionError(f"Hadamard construction of order {n} is not orthogonal")
    return h


def equal_diagonal_rotation(eigvals: torch.Tensor) -> torch.Tensor:
    """Orthogonal Q (C, C) with ``diag(Q diag(eigvals) Q^T)`` all equal to ``eigvals.mean()``.

    Each Givens rotation in the plane of one entry above and one below the mean sets the first
    to the mean exactly, so at most C-1 rotations are needed. float64.
    """
    lam = eigvals.detach().to(torch.float64).cpu()
    c = lam.numel()
    a = torch.diag(lam)
    q = torch.eye(c, dtype=torch.float64)
    m = lam.mean().item()
    tol = 1e-12 * max(1.0, abs(m))
    for _ in range(c):
        d = torch.diagonal(a)
        hi = int(torch.argmax(d))
        lo = int(torch.argmin(d))
        if d[hi] - m <= tol and m - d[lo] <= tol:
            break
        i, j = (hi, lo) if d[hi] - m >= m - d[lo] else (lo, hi)  # i: the entry we set to m
        aii, ajj, aij = a[i, i].item(), a[j, j].item(), a[i, j].item()
        # after rotating by theta: a_ii(theta) = mid + rad * cos(2 theta - phi); solve a_ii = m.
        mid, half = (aii + ajj) / 2, (aii - ajj) / 2
        rad, phi = math.hypot(half, aij), math.atan2(aij, half)
        theta = (math.acos(max(-1.0, min(1.0, (m - mid) / rad))) + phi) / 2 if rad > 0 else 0.0
        g = torch.eye(c, dtype=torch.float64)
        cs, sn = math.cos(theta), math.sin(theta)
        g[i, i], g[i, j], g[j, i], g[j, j] = cs, sn, -sn, cs
        a = g @ a @ g.T
        q = g @ q
    return q


class PhiS(nn.Module):
    """PHI-S normaliser for ``dim`` channels.

    Usage: ``update(x)`` on batches of features ((B,C,H,W) or (N,C)), then ``fit()`` (after
    ``sync_statistics()`` when several processes each saw part of the data); afterwards
    ``forward(x)`` / ``inverse(x)`` keep the shape of ``x``. Buffers ``mean`` (C,), ``alpha`` (),
    ``rotation`` R (C,C), ``inv_rotation`` R^T (C,C) (the authors' layout) and ``fitted`` are saved
    in state dicts; the float64 streaming sums are not. Using it before ``fit()`` raises.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("rotation", torch.eye(dim))
        self.register_buffer("inv_rotation", torch.eye(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.reset()

    # -- the calibration protocol of upsamplers and objectives (they delegate to this) --------
    @property
    def calibrated(self) -> bool:
        # a meta-device copy (FLOP counting) has no values to fit: it runs as if fitted
        return self.fitted.is_meta or bool(self.fitted)

    @torch.no_grad()
    def calibrate(self, feats: torch.Tensor) -> None:
        """Accumulate statistics from features (B, C, H, W) or (N, C)."""
        self.update(feats)

    def finish_calibration(self) -> None:
        """Sum the statistics over processes (every rank fits the same transform), fit, and drop
        the streaming sums."""
        self.sync_statistics()
        self.fit()
        self.reset()

    # -- statistics --------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the streaming sums (the fitted transform stays)."""
        self._count = 0
        self._sum: Optional[torch.Tensor] = None
        self._sum_outer: Optional[torch.Tensor] = None

    def _as_rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and x.shape[1] == self.dim:
            return x.permute(0, 2, 3, 1).reshape(-1, self.dim)
        if x.ndim == 2 and x.shape[1] == self.dim:
            return x
        raise ValueError(f"PhiS({self.dim}) expects (B,{self.dim},H,W) or (N,{self.dim}), got {tuple(x.shape)}")

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Accumulate float64 sums of x and x x^T over all pixels/rows of ``x``."""
        rows = self._as_rows(x.detach()).to(torch.float64)
        if self._sum is None:
            self._sum = torch.zeros(self.dim, dtype=torch.float64, device=rows.device)
            self._sum_outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=rows.device)
        self._sum += rows.sum(0).to(self._sum.device)
        self._sum_outer += (rows.T @ rows).to(self._sum.device)
        self._count += rows.shape[0]

    @property
    def count(self) -> int:
        """Feature vectors seen since the last reset."""
        return self._count

    def statistics(self):
        """(count, sum (C,), sum of outer products (C,C)) in float64, e.g. to all-reduce across ranks
        and write back with :meth:`set_statistics` before :meth:`fit`."""
        return self._count, self._sum, self._sum_outer

    def set_statistics(self, count: int, total: torch.Tensor, total_outer: torch.Tensor) -> None:
        self._count = int(count)
        self._sum = total.to(torch.float64)
        self._sum_outer = total_outer.to(torch.float64)

    def sync_statistics(self) -> None:
        """Sum the streaming statistics over the processes of ``torch.distributed`` (a no-op when
        it is not initialised), so every process fits the same transform."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._sum is None:
            raise RuntimeError("PhiS.sync_statistics(): this process saw no features; call update(x) first")
        n = torch.tensor(float(self._count), dtype=torch.float64, device=self._sum.device)
        for t in (n, self._sum, self._sum_outer):
            dist.all_reduce(t)
        self._count = int(n.item())

    @torch.no_grad()
    def fit(self) -> "PhiS":
        """Compute mean, alpha and rotation from the accumulated sums; marks the module fitted."""
        if self._count < 2 or self._sum is None:
            raise RuntimeError(f"PhiS.fit() needs at least 2 feature vectors, got {self._count}; call update(x) first")
        mu = self._sum / self._count
        cov = (self._sum_outer - self._count * torch.outer(mu, mu)) / (self._count - 1)  # unbiased
        cov = (cov + cov.T) / 2
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending; columns are eigenvectors
        eigvals = eigvals.clamp_min(0)
        mean_eig = eigvals.mean()
        if mean_eig <= 0:
            raise RuntimeError("PhiS.fit(): the features have zero variance; cannot standardise")
        h = hadamard(self.dim)
        if h is None:
            h = equal_diagonal_rotation(eigvals)
        rot = h.to(eigvecs.device) @ eigvecs.T
        self.mean.copy_(mu.to(self.mean))
        self.alpha.fill_(float(mean_eig.rsqrt()))
        self.rotation.copy_(rot.to(self.rotation))
        self.inv_rotation.copy_(rot.T.to(self.inv_rotation))
        self.fitted.fill_(True)
        return self

    # -- transform ---------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.calibrated:
            raise RuntimeError(
                "PhiS is not fitted: feed backbone features with update(x) (e.g. FeatSharp.calibrate) "
                "and call fit() before using it, or load a weight file that holds fitted PHI-S statistics")

    def _apply_channels(self, x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
        mat = mat.to(x.dtype)
        if x.ndim == 4:
            return torch.einsum("oc,bchw->bohw", mat, x)
        return x @ mat.T

    def _bcast(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        v = v.to(x.dtype)
        return v.view(1, -1, 1, 1) if x.ndim == 4 else v.view(1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,C,H,W) or (N,C) in feature space -> alpha R (x - mu), same shape."""
        self._check()
        self._as_rows(x)  # shape check only
        return self._apply_channels(x - self._bcast(self.mean, x), self.rotation) * self.alpha.to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised (B,C,H,W) or (N,C) -> R^T y / alpha + mu, same shape."""
        self._check()
        self._as_rows(y)
        return self._apply_channels(y / self.alpha.to(y.dtype), self.inv_rotation) + self._bcast(self.mean, y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, fitted={bool(self.fitted)}"


class PhiSCalibration(Calibration):
    """The calibration protocol (:class:`~.calibration.Calibration`) for a module whose data-fitted
    statistics are those of its PHI-S normaliser ``self.phi_s`` (``None``: nothing to fit). Mixed
    in before the base class: ``class FeatSharp(PhiSCalibration, Upsampler)``."""

    phi_s: Optional[PhiS]

    @property
    def calibrated(self) -> bool:
        return self.phi_s is None or self.phi_s.calibrated

    def calibrate(self, feats: torch.Tensor) -> None:
        """Accumulate statistics from backbone last-layer maps (B, C, h, w)."""
        if self.phi_s is not None:
            self.phi_s.calibrate(feats)

    def finish_calibration(self) -> None:
        """Fit from the statistics of every process (see :meth:`PhiS.finish_calibration`)."""
        if self.phi_s is not None:
            self.phi_s.finish_calibration()
