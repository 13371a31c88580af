"""Spectral reparametrisation of linear weights (FeatSharp's training recipe; sigma-reparam):

    W_eff = W * (softplus(s) + 0.05) / sigma(W)

with ``sigma(W)`` the largest singular value, tracked by power iteration (one step per training
forward, vectors ``_u``, ``_v``), and ``s`` a learned scalar (``scale``, shape (1, 1)) started so
that ``W_eff == W`` at registration. The learned scale sets the layer's gain, the direction
comes from ``W``: a well-conditioned parametrisation for a block trained from LayerScale 1e-6.
Fused weights (``qkv``, SwiGLU's ``w12``) are reparametrised per row chunk (q, k, v; gate, value).

It is a ``torch.nn.utils.parametrize`` parametrisation, so a module's state dict holds
``<name>.parametrizations.weight.original`` and ``<name>.parametrizations.weight.0.*``;
:func:`bake_spectral_reparam` (a module) and :func:`bake_spectral_state_dict` (a state dict, e.g.
the authors' checkpoints) replace them by the plain weight ``W_eff``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["SpectralScale", "ChunkedSpectralScale", "spectral_reparametrize", "bake_spectral_reparam",
           "bake_spectral_state_dict", "SPECTRAL_MIN_GAIN", "SPECTRAL_EPS"]

SPECTRAL_MIN_GAIN = 0.05  # the "+ 0.05": the gain never reaches 0
SPECTRAL_EPS = 1e-6  # added to sigma


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class SpectralScale(nn.Module):
    """Parametrisation ``weight (out, in) -> weight * (softplus(scale) + 0.05) / sigma(weight)``."""

    def __init__(self, weight: torch.Tensor, eps: float = SPECTRAL_EPS, init_iterations: int = 100):
        super().__init__()
        self.eps = float(eps)
        w = weight.detach().float()
        g = torch.Generator().manual_seed(0)
        u = F.normalize(torch.randn(w.shape[0], generator=g).to(w), dim=0)
        v = F.normalize(torch.randn(w.shape[1], generator=g).to(w), dim=0)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self._power_iteration(w, init_iterations)
        gain = max(float(self._u @ (w @ self._v)) + self.eps - SPECTRAL_MIN_GAIN, 1e-5)
        self.scale = nn.Parameter(torch.full((1, 1), _inverse_softplus(gain)))

    @torch.no_grad()
    def _power_iteration(self, w: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            self._v.copy_(F.normalize(w.T @ self._u, dim=0, eps=self.eps))
            self._u.copy_(F.normalize(w @ self._v, dim=0, eps=self.eps))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The largest singular value of ``weight`` (differentiable in ``weight``; one power step
        per call in training mode)."""
        if self.training:
            self._power_iteration(weight.detach().float(), 1)
        u, v = self._u.clone(), self._v.clone()
        return u @ (weight.float() @ v) + self.eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        gain = (F.softplus(self.scale.float()) + SPECTRAL_MIN_GAIN) / self.sigma(weight)
        return (weight.float() * gain).to(weight.dtype)


class ChunkedSpectralScale(nn.Module):
    """One :class:`SpectralScale` per row chunk (``parts.i``) of a fused weight."""

    def __init__(self, weight: torch.Tensor, chunks: int):
        super().__init__()
        if weight.shape[0] % chunks:
            raise ValueError(f"{weight.shape[0]} rows do not split into {chunks} chunks")
        self.chunks = int(chunks)
        self.parts = nn.ModuleList(SpectralScale(w) for w in weight.chunk(chunks, dim=0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(w) for p, w in zip(self.parts, weight.chunk(self.chunks, dim=0))], dim=0)


def spectral_reparametrize(linear: nn.Linear, chunks: int = 1) -> nn.Linear:
    """Register the reparametrisation on ``linear.weight`` (in place; the output is unchanged)."""
    p = SpectralScale(linear.weight) if chunks == 1 else ChunkedSpectralScale(linear.weight, chunks)
    parametrize.register_parametrization(linear, "weight", p)
    return linear


@torch.no_grad()
def bake_spectral_reparam(module: nn.Module) -> nn.Module:
    """Replace every parametrised weight under ``module`` by its current value (in place, no
    power-iteration step), leaving plain ``weight`` parameters. Not for a deep copy of a
    parametrised module: torch shares the parametrised class between copies, and removing it
    from one breaks the other (bake the state dict instead, :func:`bake_spectral_state_dict`)."""
    was_training = module.training
    module.eval()
    for m in list(module.modules()):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    module.train(was_training)
    return module


def _baked(weight: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """``weight * gain / sigma`` for one chunk from its ``scale`` (and ``_u``, ``_v`` if stored:
    the sigma the trained network used; else the exact largest singular value)."""
    w = weight.double()
    if "_u" in params and "_v" in params:
        sigma = params["_u"].double() @ (w @ params["_v"].double()) + SPECTRAL_EPS
    else:
        sigma = torch.linalg.matrix_norm(w, ord=2) + SPECTRAL_EPS
    version = int(params["_sn_version"]) if "_sn_version" in params else 2
    scale = params["scale"].double().reshape(-1)[0]
    gain = scale if version == 1 else F.softplus(scale) + SPECTRAL_MIN_GAIN
    return (w * gain / sigma).to(weight.dtype)


def bake_spectral_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict with every ``X.parametrizations.weight.original`` (+ ``X.parametrizations.weight.0.*``)
    replaced by the plain ``X.weight``. Chunked parametrisations (``0.parts.i.*``) split the rows
    into 3 chunks for a ``qkv`` weight, 2 for a ``w12`` one, else as many as there are parts; a
    chunk without entries is left as it is."""
    out = dict(sd)
    tag = ".parametrizations.weight."
    for key in [k for k in sd if k.endswith(tag + "original")]:
        name = key[: -len(tag + "original")]
        prefix = name + tag + "0."
        params = {k[len(prefix):]: out.pop(k) for k in list(out) if k.startswith(prefix)}
        weight = out.pop(key)
        if "scale" in params:
            out[name + ".weight"] = _baked(weight, params)
            continue
        parts: Dict[int, Dict[str, torch.Tensor]] = {}
        for k, v in params.items():
            if not k.startswith("parts."):
                raise KeyError(f"unknown spectral parametrisation entry {prefix + k}")
            i, _, rest = k[len("parts."):].partition(".")
            parts.setdefault(int(i), {})[rest] = v
        leaf = name.rsplit(".", 1)[-1]
        chunks = 3 if leaf == "qkv" else 2 if leaf == "w12" else max(parts) + 1
        pieces = list(weight.chunk(chunks, dim=0))
        for i, p in parts.items():
            pieces[i] = _baked(pieces[i], p)
        out[name + ".weight"] = torch.cat(pieces, dim=0)
    return out
