"""Optimizer pieces of the recipes that need more than one learning rate or a clipping schedule
(FeatSharp's release): gradient clipping that starts tight; parameter groups by name come from the
engine's :class:`~brixel_plugins.engine.TrainableOptimWrapperConstructor` (``paramwise_cfg.groups``).

    optim_wrapper = dict(
        type='WarmupClipOptimWrapper', constructor='TrainableOptimWrapperConstructor',
        optimizer=dict(type='NAdam', lr=5e-4),
        clip_grad=dict(max_norm=5.0), warmup_max_norm=1e-4, warmup_steps=10,
        paramwise_cfg=dict(groups=[dict(pattern=r'^upsampler\\.jbu\\.', lr=1e-4), ...]))

mmengine's schedulers then scale every group's own learning rate (warm-up, cosine).
"""
from __future__ import annotations

from mmengine.optim import OptimWrapper

from ..engine import TrainableOptimWrapperConstructor
from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

__all__ = ["WarmupClipOptimWrapper"]


# configs written before the engine's constructor served every trainer name it by these
for _old_name in ("DistillOptimWrapperConstructor", "ParamGroupsOptimWrapperConstructor"):
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(name=_old_name, module=TrainableOptimWrapperConstructor)


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
