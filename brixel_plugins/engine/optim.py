"""An optimizer that only ever sees parameters that train, for every trainer here.

mmengine's default constructor hands every parameter to the optimizer, frozen or not (with a
``paramwise_cfg`` it even makes a group per frozen tensor); weight decay then leaves them alone
only because their grads stay None. Here the frozen DINOv3 (and a frozen upsampler) never enter
the optimizer: :class:`TrainableOptimWrapperConstructor` for the mmengine Runners (distillation,
MMSegmentation), :func:`check_trainable_only` for optimizers built elsewhere (Detectron2).

    optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                         optimizer=dict(type='AdamW', lr=1e-3),
                         paramwise_cfg=...)   # optional: mmengine's keys (norm_decay_mult, custom_keys, ...)
                                              # or groups=[dict(pattern=REGEX, lr=...), ...]
"""
from __future__ import annotations

import logging
import re
from typing import List, Tuple

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS, DefaultScope

from .parallel import unwrap_model

__all__ = ["TrainableOptimWrapperConstructor", "trainable_named_parameters", "check_trainable_only"]


def trainable_named_parameters(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every parameter that requires grad, in ``named_parameters`` order
    (names without a DDP wrapper's ``module.`` prefix); refuses a model with nothing to train."""
    model = unwrap_model(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(model).__name__} has no parameter that trains: nothing to optimise")
    return named


def check_trainable_only(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Refuse an optimizer that holds a frozen parameter of ``model`` (e.g. a custom ``params``
    that does not skip ``requires_grad=False``): its weight decay or momentum would move it."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    bad = [n for n, p in unwrap_model(model).named_parameters() if not p.requires_grad and id(p) in held]
    if bad:
        raise ValueError(f"the optimizer holds {len(bad)} frozen parameters (e.g. {bad[:3]}); give it only "
                         f"parameters with requires_grad (trainable_named_parameters)")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor restricted to parameters with ``requires_grad``.

    ``paramwise_cfg`` takes either mmengine's own keys (``norm_decay_mult``, ``custom_keys``, ...;
    frozen tensors' groups are dropped) or ``groups=[dict(pattern=REGEX, **options), ...]``: each
    parameter joins the first group whose ``pattern`` matches its name (``re.search``, e.g.
    ``upsampler.jbu.ups.0.range_temp``) with that group's optimizer options (``lr``,
    ``weight_decay``, ...); the rest keep the optimizer's own. A group matching nothing is left
    out with a warning (e.g. spectral scales when the reparametrisation is off). mmengine's
    schedulers then scale every group's own learning rate.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        # the scope this constructor was built in (e.g. the distillation registry's), so that the
        # optimizer and wrapper types of that scope resolve when called outside a Runner too
        current = DefaultScope.get_current_instance()
        self.scope = current.scope_name if current is not None else None

    def __call__(self, model):
        model = unwrap_model(model)
        with DefaultScope.overwrite_default_scope(self.scope):
            optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=self.param_groups(model)))
            check_trainable_only(optimizer, model)
            wrapper_cfg = dict(self.optim_wrapper_cfg)
            wrapper_cfg.setdefault("type", "OptimWrapper")
            return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))

    def param_groups(self, model: torch.nn.Module) -> list:
        named = trainable_named_parameters(model)
        cfg = dict(self.paramwise_cfg or {})
        if "groups" in cfg:
            groups = cfg.pop("groups")
            if cfg:
                raise ValueError(f"paramwise_cfg: 'groups' cannot be combined with {sorted(cfg)}")
            return self._pattern_groups(named, [dict(g) for g in groups])
        if cfg:
            groups: list = []
            self.add_params(groups, model)  # mmengine's rules, one group per tensor
            return [g for g in groups if g["params"][0].requires_grad]
        return [p for _, p in named]

    @staticmethod
    def _pattern_groups(named, groups: List[dict]) -> list:
        patterns = [re.compile(g.pop("pattern")) for g in groups]
        buckets: List[list] = [[] for _ in groups]
        rest = []
        for name, p in named:
            hit = next((i for i, pat in enumerate(patterns) if pat.search(name)), None)
            (rest if hit is None else buckets[hit]).append(p)
        empty = [patterns[i].pattern for i, b in enumerate(buckets) if not b]
        if empty:
            print_log(f"parameter group patterns {empty} match no trainable parameter (groups left out)",
                      logger="current", level=logging.WARNING)
        return ([dict(params=rest)] if rest else []) + [dict(g, params=b) for g, b in zip(groups, buckets) if b]
