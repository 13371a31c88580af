"""Optimizer pieces of the recipes that need more than one learning rate or a clipping schedule
(FeatSharp's release): parameter groups by name, and gradient clipping that starts tight.

    optim_wrapper = dict(
        type='WarmupClipOptimWrapper', constructor='ParamGroupsOptimWrapperConstructor',
        optimizer=dict(type='NAdam', lr=5e-4),
        clip_grad=dict(max_norm=5.0), warmup_max_norm=1e-4, warmup_steps=10,
        paramwise_cfg=dict(groups=[dict(pattern=r'^upsampler\\.jbu\\.', lr=1e-4), ...]))

mmengine's schedulers then scale every group's own learning rate (warm-up, cosine).
"""
from __future__ import annotations

import logging
import re

from mmengine.logging import print_log
from mmengine.optim import OptimWrapper

from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from .runner import DistillOptimWrapperConstructor

__all__ = ["ParamGroupsOptimWrapperConstructor", "WarmupClipOptimWrapper"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ParamGroupsOptimWrapperConstructor(DistillOptimWrapperConstructor):
    """Like :class:`DistillOptimWrapperConstructor` (trainable parameters outside the frozen
    backbone only), with ``paramwise_cfg=dict(groups=[dict(pattern=REGEX, **options), ...])``:
    each parameter joins the first group whose ``pattern`` matches its name in the
    :class:`DistillModel` (``re.search``, e.g. ``upsampler.jbu.ups.0.range_temp``,
    ``objective.uncertainty.net.0.weight``) and gets that group's optimizer options (``lr``,
    ``weight_decay``, ...); the rest take the optimizer's own. A group matching nothing is left
    out with a warning (e.g. spectral scales when the reparametrisation is off)."""

    def __call__(self, model):
        cfg = dict(self.paramwise_cfg or {})
        groups = [dict(g) for g in cfg.pop("groups", [])]
        if cfg:
            raise ValueError(f"ParamGroupsOptimWrapperConstructor: paramwise_cfg takes only 'groups', got {sorted(cfg)}")
        inner = model.module if hasattr(model, "module") else model
        named = [(n, p) for n, p in inner.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        if not named:
            raise ValueError("nothing to train: the upsampler has no trainable parameters")
        patterns = [re.compile(g.pop("pattern")) for g in groups]
        buckets = [[] for _ in groups]
        rest = []
        for name, p in named:
            hit = next((i for i, pat in enumerate(patterns) if pat.search(name)), None)
            (rest if hit is None else buckets[hit]).append(p)
        empty = [patterns[i].pattern for i, b in enumerate(buckets) if not b]
        if empty:  # e.g. the spectral-scale group of a recipe run with spectral_reparam=False
            print_log(f"parameter group patterns {empty} match no trainable parameter (groups left out)",
                      logger="current", level=logging.WARNING)
        param_groups = ([dict(params=rest)] if rest else []) + [dict(g, params=b) for g, b in zip(groups, buckets) if b]
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=param_groups))
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))


@OPTIM_WRAPPERS.register_module()
class WarmupClipOptimWrapper(OptimWrapper):
    """mmengine's :class:`OptimWrapper` whose gradient-norm clipping uses ``warmup_max_norm`` for
    the first ``warmup_steps`` optimizer steps and ``clip_grad['max_norm']`` afterwards
    (FeatSharp: 1e-4 for 10 steps, then 5.0). The step count is the wrapper's own, restored by
    the Runner on resume."""

    def __init__(self, optimizer, clip_grad: dict, warmup_max_norm: float = 1e-4, warmup_steps: int = 10, **kwargs):
        if "max_norm" not in clip_grad or clip_grad.get("type", "norm") != "norm":
            raise ValueError(f"WarmupClipOptimWrapper needs clip_grad=dict(max_norm=...), got {clip_grad}")
        super().__init__(optimizer, clip_grad=dict(clip_grad), **kwargs)
        self.max_norm = float(self.clip_grad_kwargs["max_norm"])
        self.warmup_max_norm, self.warmup_steps = float(warmup_max_norm), int(warmup_steps)

    def step(self, **kwargs) -> None:
        steps_done = (self._inner_count - 1) // self._accumulative_counts  # _inner_count counts backward()s
        warm = steps_done < self.warmup_steps
        self.clip_grad_kwargs["max_norm"] = self.warmup_max_norm if warm else self.max_norm
        super().step(**kwargs)
