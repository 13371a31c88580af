"""Spectral reparametrisation of linear weights (FeatSharp's training recipe; sigma-reparam):

    W_eff = W * (softplus(s) + 0.05) / sigma(W)

with ``sigma(W)`` the largest singular value, tracked by power iteration (one step per training
forward, vectors ``_u``, ``_v``), and ``s`` a learned scalar (``sn_scale``, shape (1, 1)) started
so that ``W_eff == W`` at registration. The learned scale sets the layer's gain, the direction
comes from ``W``: a well-conditioned parametrisation for a block trained from LayerScale 1e-6.
Fused weights (``qkv``, SwiGLU's ``w12``) are reparametrised per row chunk (q, k, v; gate, value).

It is a ``torch.nn.utils.parametrize`` parametrisation whose state-dict entries are named as the
FeatSharp release names them: ``<name>.parametrizations.weight.original`` and
``<name>.parametrizations.weight.0.{sn_scale, _u, _v, _sn_version}`` (``0.parts.i.*`` per chunk).
``_sn_version`` 2 is the softplus gain above; version 1 (what a release entry without
``_sn_version`` means) uses ``sn_scale`` itself as the gain. :func:`bake_spectral_reparam` (a
module) and :func:`bake_spectral_state_dict` (a state dict, e.g. the authors' checkpoints) replace
them by the plain weight ``W_eff``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["SpectralScale", "ChunkedSpectralScale", "spectral_reparametrize", "bake_spectral_reparam",
           "bake_spectral_state_dict", "SpectralStateError", "SPECTRAL_MIN_GAIN", "SPECTRAL_EPS"]

SPECTRAL_MIN_GAIN = 0.05  # the "+ 0.05": the gain never reaches 0
SPECTRAL_EPS = 1e-6  # added to sigma


class SpectralStateError(KeyError):
    """A state dict's spectral parametrisation entries are not the layout described above."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class SpectralScale(nn.Module):
    """Parametrisation ``weight (out, in) -> weight * (softplus(sn_scale) + 0.05) / sigma(weight)``."""

    def __init__(self, weight: torch.Tensor, eps: float = SPECTRAL_EPS, init_iterations: int = 100):
        super().__init__()
        self.eps = float(eps)
        w = weight.detach().float()
        g = torch.Generator().manual_seed(0)
        u = F.normalize(torch.randn(w.shape[0], generator=g).to(w), dim=0)
        v = F.normalize(torch.randn(w.shape[1], generator=g).to(w), dim=0)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self.register_buffer("_sn_version", torch.tensor(2))
        self._power_iteration(w, init_iterations)
        gain = max(float(self._u @ (w @ self._v)) + self.eps - SPECTRAL_MIN_GAIN, 1e-5)
        self.sn_scale = nn.Parameter(torch.full((1, 1), _inverse_softplus(gain)))

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
        gain = (F.softplus(self.sn_scale.float()) + SPECTRAL_MIN_GAIN) / self.sigma(weight)
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


_ENTRIES = {"sn_scale", "_u", "_v", "_sn_version"}


def _baked(weight: torch.Tensor, params: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """``weight * gain / sigma`` for one chunk from its entries (``prefix`` names them in errors):
    ``sn_scale`` (required), ``_u`` and ``_v`` (the sigma the trained network used; without them
    the exact largest singular value) and ``_sn_version`` (1 if absent, as the release reads it)."""
    unknown = sorted(set(params) - _ENTRIES)
    if unknown:
        raise SpectralStateError(f"unknown spectral parametrisation entry {prefix + unknown[0]!r} "
                                 f"(expected {sorted(_ENTRIES)})")
    if "sn_scale" not in params:
        raise SpectralStateError(f"no learned spectral scale {prefix + 'sn_scale'!r} "
                                 f"among {sorted(prefix + k for k in params)}")
    if ("_u" in params) != ("_v" in params):
        raise SpectralStateError(f"{prefix}: power-iteration vectors '_u' and '_v' must come together")
    w = weight.double()
    if "_u" in params:
        u, v = params["_u"].double().reshape(-1), params["_v"].double().reshape(-1)
        if (u.numel(), v.numel()) != tuple(w.shape):
            raise SpectralStateError(f"{prefix}_u/_v have {u.numel()}/{v.numel()} entries "
                                     f"for a weight {tuple(w.shape)}")
        sigma = u @ (w @ v) + SPECTRAL_EPS
    else:
        sigma = torch.linalg.matrix_norm(w, ord=2) + SPECTRAL_EPS
    version = int(params["_sn_version"]) if "_sn_version" in params else 1
    if version not in (1, 2):
        raise SpectralStateError(f"{prefix}_sn_version is {version}; versions 1 and 2 exist")
    scale = params["sn_scale"].double().reshape(-1)[0]
    gain = scale if version == 1 else F.softplus(scale) + SPECTRAL_MIN_GAIN
    return (w * gain / sigma).to(weight.dtype)


def bake_spectral_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict with every ``X.parametrizations.weight.original`` (+ ``X.parametrizations.weight.0.*``)
    replaced by the plain ``X.weight``. Chunked parametrisations (``0.parts.i.*``) split the rows
    into 3 chunks for a ``qkv`` weight, 2 for a ``w12`` one, else as many as there are parts; a
    chunk without entries is left as it is (the release's unnormalised values). Entries that do
    not fit this layout raise :class:`SpectralStateError` naming the key."""
    out = dict(sd)
    tag = ".parametrizations.weight."
    for key in [k for k in sd if k.endswith(tag + "original")]:
        name = key[: -len(tag + "original")]
        prefix = name + tag + "0."
        params = {k[len(prefix):]: out.pop(k) for k in list(out) if k.startswith(prefix)}
        weight = out.pop(key)
        if not any(k.startswith("parts.") for k in params):
            out[name + ".weight"] = _baked(weight, params, prefix)
            continue
        parts: Dict[int, Dict[str, torch.Tensor]] = {}
        for k, v in params.items():
            i, _, rest = k[len("parts."):].partition(".")
            if not k.startswith("parts.") or not i.isdigit():
                raise SpectralStateError(f"unknown spectral parametrisation entry {prefix + k!r}")
            parts.setdefault(int(i), {})[rest] = v
        leaf = name.rsplit(".", 1)[-1]
        chunks = 3 if leaf == "qkv" else 2 if leaf == "w12" else max(parts) + 1
        if max(parts) >= chunks or weight.shape[0] % chunks:
            raise SpectralStateError(f"{prefix}parts.{max(parts)}: {name} ({tuple(weight.shape)}) does not split "
                                     f"into {chunks} chunks with these parts")
        pieces = list(weight.chunk(chunks, dim=0))
        for i, p in parts.items():
            pieces[i] = _baked(pieces[i], p, f"{prefix}parts.{i}.")
        out[name + ".weight"] = torch.cat(pieces, dim=0)
    leftover = sorted(k for k in out if tag in k)
    if leftover:
        raise SpectralStateError(f"spectral parametrisation entry {leftover[0]!r} has no "
                                 f"'{tag}original' weight")
    return out
