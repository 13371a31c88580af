"""Held-out fidelity of an upsampler against the high-resolution teacher, beside bilinear.

Per image: cosine similarity (mean over pixels), relative L1 (sum|X-Y| / sum|Y|) and FeatSharp's
fidelity MSE(Y, mean(Y)) / MSE(X, Y) (higher is better; mean(Y) per channel over the image).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric

from .registry import METRICS

KEYS = ("cosine", "rel_l1", "fidelity")


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cosine_similarity(x.float(), y.float(), dim=1, eps=1e-8).mean())


def relative_l1(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.float(), y.float()
    return float((x - y).abs().sum() / y.abs().sum().clamp_min(1e-12))


def fidelity(x: torch.Tensor, y: torch.Tensor) -> float:
    """MSE(Y, mean(Y)) / MSE(X, Y) for (1, D, H, W) maps X (prediction), Y (target)."""
    x, y = x.float(), y.float()
    spread = (y - y.mean(dim=(-2, -1), keepdim=True)).pow(2).mean()
    err = F.mse_loss(x, y)
    return float(spread / err.clamp_min(1e-12))


def map_metrics(x: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    return {"cosine": cosine_similarity(x, y), "rel_l1": relative_l1(x, y), "fidelity": fidelity(x, y)}


def format_table(metrics: Dict[str, float], method: str = "upsampler") -> str:
    """Rows upsampler / bilinear, columns val loss, cosine, rel. L1, fidelity."""
    head = f"{'':<12}{'val loss':>10}{'cosine':>10}{'rel L1':>10}{'fidelity':>10}"
    rows = [head]
    for name, key in ((method, "upsampler"), ("bilinear", "bilinear")):
        loss = metrics.get("loss" if key == "upsampler" else "bilinear_loss", float("nan"))
        vals = [metrics.get(f"{key}/{k}", float("nan")) for k in KEYS]
        rows.append(f"{name:<12}{loss:>10.4f}" + "".join(f"{v:>10.4f}" for v in vals))
    return "\n".join(rows)


@METRICS.register_module()
class DistillMetric(BaseMetric):
    """Averages the per-image numbers DistillModel's ``predict`` returns (key ``loss`` = the
    method's validation loss, used to keep the best checkpoint)."""

    default_prefix = "distill"

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for s in data_samples:
            flat = {"loss": s["loss"], "bilinear_loss": s["bilinear_loss"]}
            for key in ("upsampler", "bilinear"):
                flat.update({f"{key}/{k}": v for k, v in s[key].items()})
            self.results.append(flat)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        keys = results[0].keys()
        out = {k: sum(r[k] for r in results) / len(results) for k in keys}
        out["num_images"] = len(results)
        return out
