"""Validation numbers logged as they are.

mmengine's LogProcessor averages every scalar whose name contains 'loss' over its window, in every
mode; a validation metric such as ``distill/loss`` then reaches the log, ``scalars.json`` and
TensorBoard as a mean over the last validations instead of the value just measured.
"""
from __future__ import annotations

from mmengine.registry import LOG_PROCESSORS
from mmengine.runner import LogProcessor


@LOG_PROCESSORS.register_module()
class UnsmoothedValLogProcessor(LogProcessor):
    """mmengine's LogProcessor (same arguments), but in val/test mode every scalar except timings is
    reported as its latest value; ``custom_cfg`` entries still apply. Training logs are unchanged."""

    def _collect_scalars(self, custom_cfg, runner, mode, reserve_prefix=False):
        tag = super()._collect_scalars(custom_cfg, runner, mode, reserve_prefix)
        if mode == "train":
            return tag
        custom = {c.get("log_name", c["data_src"]) for c in custom_cfg}
        if reserve_prefix:
            custom = {f"{mode}/{name}" for name in custom}
        for prefix_key, buffer in runner.message_hub.log_scalars.items():
            if not prefix_key.startswith(f"{mode}/"):
                continue
            key = prefix_key if reserve_prefix else self._remove_prefix(prefix_key, f"{mode}/")
            if key in tag and key not in custom and not key.endswith("time"):
                tag[key] = buffer.current()
        return tag
