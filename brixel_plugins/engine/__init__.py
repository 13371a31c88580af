"""mmengine pieces every trainer of this project shares (distillation, MMSegmentation): nothing is
lost, nothing NaN is written. Framework-neutral: imports mmengine only.

Importing this package registers its components in mmengine's *root* registries, so a config of any
scope (``default_scope='brixel_plugins'`` or ``'mmseg'``) names them without a prefix; a config makes
sure they are imported with ``custom_imports = dict(imports=['brixel_plugins.engine'])``.

How a trainer uses them (config)::

    runner_type = 'SafeRunner'           # trusted weights_only loading; resume falls back to the
                                         # newest loadable checkpoint (or subclass SafeRunner)
    log_processor = dict(type='UnsmoothedValLogProcessor', by_epoch=False)   # val metrics as measured
    default_hooks = dict(checkpoint=dict(
        type='SafeCheckpointHook',       # CheckpointHook's arguments; new file first, then pointer,
        backend_args=dict(backend='atomic_local'), ...))   # then deletions; atomic file writes
    custom_hooks = [dict(type='NonFiniteLossHook', max_skipped_steps=0)]  # stop on NaN/Inf loss

and, in the tool, ``except NonFiniteError as e: raise SystemExit(f'error: {e}')`` for a clear
message and a non-zero exit. The plain functions (``non_finite_losses``, ``first_non_finite``,
``unloadable_reason``, ``trusted_checkpoint_globals``) serve trainers that do not use mmengine.
"""
from .checkpoint import SafeCheckpointHook
from .files import AtomicLocalBackend, remove_stale_temp_files, write_text_atomic
from ..checks import first_non_finite
from .finite import NonFiniteError, NonFiniteLossHook, non_finite_losses
from .loading import (CheckpointError, SafeRunner, checkpoint_globals, resume_candidates,
                      trusted_checkpoint_globals, unloadable_reason)
from .log_processor import UnsmoothedValLogProcessor

__all__ = ["SafeCheckpointHook", "AtomicLocalBackend", "remove_stale_temp_files", "write_text_atomic",
           "NonFiniteError", "NonFiniteLossHook", "first_non_finite", "non_finite_losses", "CheckpointError",
           "SafeRunner", "checkpoint_globals", "resume_candidates", "trusted_checkpoint_globals",
           "unloadable_reason", "UnsmoothedValLogProcessor"]
