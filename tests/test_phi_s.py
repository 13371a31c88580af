"""PHI-S: Hadamard constructions, standardisation properties, invertibility, refusal when unfitted."""
from __future__ import annotations

import pytest
import torch

from brixel_plugins.upsamplers.layers.phi_s import PhiS, equal_diagonal_rotation, hadamard


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 64, 384, 768, 1280])
def test_hadamard_orders(n):
    h = hadamard(n)
    assert h is not None and h.shape == (n, n)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(h.abs(), torch.full((n, n), n ** -0.5, dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 6, 10, 52])
def test_no_hadamard(n):
    assert hadamard(n) is None


@pytest.mark.parametrize("c", [3, 6, 10])
def test_equal_diagonal_rotation(c):
    torch.manual_seed(c)
    lam = torch.rand(c, dtype=torch.float64) ** 3 * 10
    q = equal_diagonal_rotation(lam)
    torch.testing.assert_close(q @ q.T, torch.eye(c, dtype=torch.float64))
    a = q @ torch.diag(lam) @ q.T
    torch.testing.assert_close(torch.diagonal(a), lam.mean().expand(c))


def anisotropic(n, c, seed=0):
    """Correlated features with a strongly non-uniform spectrum and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(c, c, generator=g))[0]
    scales = torch.logspace(-1, 1.5, c)
    return (torch.randn(n, c, generator=g) * scales) @ basis.T + torch.randn(c, generator=g) * 3


@pytest.mark.parametrize("c", [16, 12, 6])  # Sylvester, Paley, Givens fallback
def test_standardises(c):
    x = anisotropic(5000, c)
    phi = PhiS(c)
    phi.update(x)
    phi.fit()
    y = phi(x).double()
    assert y.mean(0).abs().max() < 1e-4
    cov = torch.cov(y.T, correction=1)  # PHI-S uses the unbiased covariance
    # every channel has unit variance (the Hadamard spreads the spectrum evenly) ...
    torch.testing.assert_close(torch.diagonal(cov), torch.ones(c, dtype=torch.float64), rtol=0, atol=2e-4)
    # ... while the spectrum keeps its shape, scaled to mean 1 (PHI-S rotates, it does not whiten)
    ev_x = torch.linalg.eigvalsh(torch.cov(x.double().T, correction=1))
    ev_y = torch.linalg.eigvalsh(cov)
    torch.testing.assert_close(ev_y, ev_x / ev_x.mean(), rtol=1e-3, atol=1e-4)
    # per-channel variances of the raw features were far from equal
    assert torch.var(x, 0).max() / torch.var(x, 0).min() > 5


def test_streaming_equals_one_shot_and_maps():
    x = anisotropic(3000, 8, seed=1)
    one, many = PhiS(8), PhiS(8)
    one.update(x)
    for chunk in x.split(250):
        many.update(chunk)
    one.fit()
    many.fit()
    assert many.count == 3000
    torch.testing.assert_close(one.rotation, many.rotation)
    torch.testing.assert_close(one.mean, many.mean)
    # (B, C, H, W) maps are treated per pixel
    maps = x[:2400].view(4, 20, 30, 8).permute(0, 3, 1, 2)
    m = PhiS(8)
    m.update(maps)
    m.fit()
    ref = PhiS(8)
    ref.update(x[:2400])
    ref.fit()
    torch.testing.assert_close(m.rotation, ref.rotation)
    torch.testing.assert_close(m(maps), ref(x[:2400]).view(4, 20, 30, 8).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c", [16, 6])
def test_inverse_round_trip(c):
    x = anisotropic(2000, c, seed=2)
    phi = PhiS(c)
    phi.update(x)
    phi.fit()
    maps = torch.randn(3, c, 5, 7) * 4 + 1
    torch.testing.assert_close(phi.inverse(phi(maps)), maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(phi(phi.inverse(maps)), maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(phi.inverse(phi(x)), x, rtol=1e-5, atol=1e-5)


def test_refuses_when_unfitted():
    phi = PhiS(4)
    with pytest.raises(RuntimeError, match="not fitted"):
        phi(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="not fitted"):
        phi.inverse(torch.randn(1, 4, 2, 2))
    with pytest.raises(RuntimeError, match="update"):
        phi.fit()
    with pytest.raises(ValueError):
        phi.update(torch.randn(2, 5))


def test_state_dict_round_trip():
    x = anisotropic(1000, 12, seed=3)
    phi = PhiS(12)
    phi.update(x)
    phi.fit()
    sd = phi.state_dict()
    assert set(sd) == {"mean", "alpha", "rotation", "inv_rotation", "fitted"}  # the authors' four, + fitted
    torch.testing.assert_close(sd["inv_rotation"], sd["rotation"].T)
    other = PhiS(12)
    other.load_state_dict(sd)
    assert bool(other.fitted)
    torch.testing.assert_close(other(x), phi(x))


def test_unbiased_alpha_and_rotation_by_hand():
    """alpha = 1 / sqrt(mean eigenvalue of the UNBIASED covariance); rotation = H V^T."""
    x = anisotropic(50, 4, seed=4).double()
    phi = PhiS(4)
    phi.update(x)
    phi.fit()
    cov = torch.cov(x.T, correction=1)
    lam, vecs = torch.linalg.eigh(cov)
    assert abs(phi.alpha.item() - lam.mean().rsqrt().item()) < 1e-5
    h = hadamard(4)
    rot = phi.rotation.double()
    # R = H V^T: R cov R^T = H diag(lambda) H^T, whatever signs eigh gives the eigenvectors
    torch.testing.assert_close(rot @ cov @ rot.T, h @ torch.diag(lam) @ h.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(phi.inv_rotation.double(), rot.T, rtol=0, atol=0)
