"""Stop a diverging run instead of training (and saving) NaNs.

``NonFiniteLossHook`` checks every loss term after each iteration; the first non-finite one stops
training with a message naming the iteration and the term, before any checkpoint or export of that
iteration is written (so the last good ones stay as they are).

Tolerance (``max_skipped_steps``, default 0): a non-finite loss is forgiven only when the weights
are still finite afterwards, i.e. the optimizer skipped the step (the GradScaler of mmengine's
AmpOptimWrapper, fp16 or bf16, skips steps with non-finite gradients), and only that many times in
a row. With a plain OptimWrapper (CPU, ``--amp off``) a NaN loss has already written NaNs into the
weights, so such a run stops at once whatever the setting. The default stops at the first one:
an occasional overflow under AMP is rare enough that stopping costs little, while training on
past a diverging loss silently wastes the run; raise it for AMP runs known to overflow now and then.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..common.checks import first_non_finite
from .parallel import unwrap_model


class NonFiniteError(RuntimeError):
    """Training produced NaN or Inf (loss or weights); raised instead of writing them."""


def non_finite_losses(losses: Mapping[str, object]) -> Dict[str, float]:
    """The entries of a log-vars dict whose name contains 'loss' and whose value is NaN or Inf."""
    out = {}
    for name, value in losses.items():
        if "loss" not in name:
            continue
        v = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value).float()
        if not bool(torch.isfinite(v).all()):
            out[name] = float(v.flatten()[~torch.isfinite(v.flatten())][0])
    return out


def describe_losses(bad: Mapping[str, float]) -> str:
    """"term 'loss_edge' = nan (total 'loss' = nan)": the terms first, the total in brackets."""
    terms = [f"'{k}' = {v}" for k, v in bad.items() if k != "loss"]
    total = f"'loss' = {bad['loss']}" if "loss" in bad else ""
    if terms:
        return f"term {', '.join(terms)}" + (f" (total {total})" if total else "")
    return f"total {total}"


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """After every training iteration: if a loss term is NaN/Inf, raise :class:`NonFiniteError`
    naming the iteration and the term (see the module docstring for ``max_skipped_steps``).
    Runs before the checkpoint and logger hooks; ranks agree (one flag all-reduced per iteration
    when distributed), so every process stops together."""

    priority = "VERY_HIGH"

    def __init__(self, max_skipped_steps: int = 0):
        if int(max_skipped_steps) < 0:
            raise ValueError(f"max_skipped_steps must be >= 0, got {max_skipped_steps}")
        self.max_skipped_steps = int(max_skipped_steps)
        self.skipped_in_a_row = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        bad = non_finite_losses(outputs or {})
        any_bad = bool(bad)
        if get_world_size() > 1:
            flag = torch.tensor(float(any_bad), device=_device(runner.model))
            all_reduce(flag)
            any_bad = bool(flag.item() > 0)
        if not any_bad:
            self.skipped_in_a_row = 0
            return
        iteration = runner.iter + 1  # the log's numbering
        what = describe_losses(bad) if bad else "a loss term on another rank"
        model = unwrap_model(runner.model)
        weights = first_non_finite((n, p) for n, p in model.named_parameters() if p.requires_grad)
        self.skipped_in_a_row += 1
        if weights is None and self.skipped_in_a_row <= self.max_skipped_steps:
            runner.logger.warning(f"iteration {iteration}: non-finite loss, {what}; the optimizer skipped "
                                  f"the step ({self.skipped_in_a_row} of {self.max_skipped_steps} allowed "
                                  f"in a row)")
            return
        last = runner.message_hub.get_info("last_ckpt")
        state = (f"the weights now hold NaN/Inf ({weights[0]}: {weights[1]} of {weights[2]} values)"
                 if weights else f"{self.skipped_in_a_row} non-finite steps in a row")
        message = (f"training diverged at iteration {iteration}: non-finite loss, {what}; {state}. "
                   f"Stopped without writing a checkpoint or export of this iteration; the last good "
                   f"checkpoint is {last or '(none written yet)'}. Lower the learning rate (or enable "
                   f"gradient clipping) and resume or restart.")
        runner.logger.error(message)
        raise NonFiniteError(message)


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
