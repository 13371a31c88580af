"""Each release recipe fact the distillation configs carry, checked against hand-computed values."""
from __future__ import annotations

import math

import torch

from brixel_plugins.distill.components import UncertaintyWeighting
from brixel_plugins.distill.registry import MODELS


# -- learned uncertainty ------------------------------------------------------------------------

def test_uncertainty_featup_is_gaussian_nll_of_scalenet():
    """FeatUp: sigma = exp(conv1x1(x) + 0.1) >= 1e-4, loss = mean(err / (2 sigma^2) + log sigma)."""
    torch.manual_seed(0)
    u = UncertaintyWeighting.featup(8)
    feats, err = torch.randn(2, 8, 5, 6), torch.rand(2, 30, 5, 6)
    sigma = torch.exp(u.net(feats) + 0.1).clamp_min(1e-4)
    want = (err / (2 * sigma ** 2) + sigma.log()).mean()
    torch.testing.assert_close(u(err, feats), want)
    # ScaleNet's init: PyTorch's default conv init scaled by 0.1
    assert u.net.weight.abs().max() <= 0.1 / math.sqrt(8) + 1e-6


def test_uncertainty_featsharp_net_and_formula():
    """FeatSharp: 5x5 conv C -> 256 -> 1 predicting s, loss = mean(exp(-s) * err + s / 2)."""
    u = MODELS.build(dict(type="UncertaintyWeighting", dim=8, kernel_size=5, hidden=256))
    assert [m.weight.shape for m in u.net if isinstance(m, torch.nn.Conv2d)] == [(256, 8, 5, 5), (1, 256, 5, 5)]
    feats, err = torch.randn(1, 8, 7, 7), torch.rand(1, 8, 7, 7)
    s = u.net(feats)
    torch.testing.assert_close(u(err, feats), (torch.exp(-s) * err + s / 2).mean())
