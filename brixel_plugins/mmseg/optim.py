"""An optimizer that only ever sees parameters that train.

mmengine's default constructor hands every parameter to the optimizer, frozen or not (with a
``paramwise_cfg`` it even makes a group per frozen tensor); AdamW's weight decay then never
touches them only because their grads stay None. Here the frozen DINOv3 (and a frozen upsampler)
never enter the optimizer at all.
"""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor (same arguments, ``paramwise_cfg`` included), restricted to
    parameters with ``requires_grad``; refuses a model with nothing to train."""

    def __call__(self, model):
        if hasattr(model, "module"):
            model = model.module
        if self.paramwise_cfg:
            groups = []
            self.add_params(groups, model)
            params = [g for g in groups if g["params"][0].requires_grad]
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no parameter that trains: nothing to optimise")
        optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=params))
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
