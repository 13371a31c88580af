"""Data-parallel training of the trainable part of a model over a frozen backbone: one DDP wrapper
for every trainer here (the mmengine Runners of tools/distill.py and tools/train.py through
``model_wrapper_cfg``, Detectron2's trainer through :func:`brixel_plugins.d2.engine.wrap_ddp`),
and one way to reach the wrapped model.

What the wrapper decides, so that no config has to:

- ``device_ids`` come from the device the model is on: ``[k]`` for a model on ``cuda:k``, ``None``
  on the CPU (mmengine and Detectron2 always pass the local rank, which DDP refuses for a CPU
  module, so gloo runs failed before the first step);
- only parameters that require gradients enter DDP's gradient buckets (torch's rule; the frozen
  DINOv3 and a frozen upsampler are broadcast once at construction, so every rank starts from the
  same weights even from a random init, and never reduced); the log says how many of each;
- ``find_unused_parameters=False``: every trainable parameter reaches the loss
  (tests/test_trainable_parameters.py), so DDP needs no search of the graph;
- ``sync_bn=True``: BatchNorm layers become ``SyncBatchNorm`` on CUDA (statistics over the global
  batch, as the BRIXEL release and mmseg's multi-GPU configs do). torch's ``SyncBatchNorm`` runs on
  CUDA only, so on the CPU (gloo) SyncBN layers are turned back into BatchNorm and each process
  normalises with its own batch (its running statistics are its own; rank 0's are saved).
"""
from __future__ import annotations

import logging

import torch
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

__all__ = ["FrozenBackboneDDP", "unwrap_model", "model_device"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP (or any registered mmengine) wrapper; the model itself otherwise."""
    return model.module if is_model_wrapper(model) else model


def model_device(model: torch.nn.Module) -> torch.device:
    """The one device the model's parameters are on (a clear error for a model split over several)."""
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise ValueError(f"data-parallel training needs the whole model on one device, "
                         f"found {sorted(map(str, devices))}")
    return devices.pop()


@MODEL_WRAPPERS.register_module()
class FrozenBackboneDDP(MMDistributedDataParallel):
    """mmengine's DDP wrapper (``train_step`` / ``val_step`` for mmengine Runners; a plain DDP
    ``forward`` for Detectron2) with the device, frozen-parameter and SyncBN rules of the module
    docstring. Arguments are DDP's; ``device_ids`` given by the caller must agree with the model."""

    def __init__(self, module: torch.nn.Module, device_ids=None, find_unused_parameters: bool = False,
                 sync_bn: bool = False, **kwargs):
        device = model_device(module)
        if device.type == "cpu":
            device_ids = None  # DDP takes no device ids for a CPU module
            if any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()):
                print_log("SyncBatchNorm runs on CUDA only: on the CPU each process keeps BatchNorm over its "
                          "own batch", logger="current", level=logging.WARNING)
                module = revert_sync_batchnorm(module)
        else:
            if device_ids is not None and [int(i) for i in device_ids] != [device.index]:
                raise ValueError(f"device_ids {list(device_ids)} do not match the model's device {device}")
            device_ids = [device.index] if device.index is not None else None
            if sync_bn:
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        trainable = [p for p in module.parameters() if p.requires_grad]
        frozen = [p for p in module.parameters() if not p.requires_grad]
        millions = [sum(p.numel() for p in ps) / 1e6 for ps in (trainable, frozen)]
        print_log(f"DDP on {device}: {len(trainable)} trainable tensors ({millions[0]:.2f}M parameters) in the "
                  f"gradient buckets; {len(frozen)} frozen tensors ({millions[1]:.2f}M) kept out", logger="current")
        super().__init__(module=module, device_ids=device_ids, find_unused_parameters=find_unused_parameters,
                         **kwargs)
