"""mmengine pieces every trainer of this project shares (distillation, MMSegmentation; Detectron2 for
DDP and the optimizer check): nothing is lost, nothing NaN is written, frozen parts never train, N
processes on CPU or CUDA. Framework-neutral: imports mmengine only.

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
    optim_wrapper = dict(constructor='TrainableOptimWrapperConstructor', ...)  # frozen never optimised
    model_wrapper_cfg = dict(type='FrozenBackboneDDP', sync_bn=True)  # N processes, CPU (gloo) or CUDA

and, in the tool, :mod:`brixel_plugins.engine.tool` (shared options, the config, the process group,
one run per work dir). The plain functions (``non_finite_losses``, ``first_non_finite``,
and :mod:`brixel_plugins.files.checkpoints`: safe reading, the resume rule, training records) serve
trainers that do not use mmengine (Detectron2's checkpointer uses the same ones).
"""
from ..common.checks import first_non_finite
from ..common.filesystem import remove_stale_temp_files, write_text_atomic
from .checkpoint import SafeCheckpointHook
from .files import AtomicLocalBackend
from .finite import NonFiniteError, NonFiniteLossHook, non_finite_losses
from .loading import (
    CheckpointError,
    CheckpointMismatchError,
    SafeRunner,
    checkpoint_globals,
    plain_checkpoint,
    resume_candidates,
    trusted_checkpoint_globals,
    unloadable_reason,
)
from .log_processor import UnsmoothedValLogProcessor
from .optim import TrainableOptimWrapperConstructor, check_trainable_only, trainable_named_parameters
from .parallel import FrozenBackboneDDP, model_device, unwrap_model

__all__ = ["SafeCheckpointHook", "AtomicLocalBackend", "remove_stale_temp_files", "write_text_atomic",
           "NonFiniteError", "NonFiniteLossHook", "first_non_finite", "non_finite_losses", "CheckpointError",
           "CheckpointMismatchError", "plain_checkpoint",
           "SafeRunner", "checkpoint_globals", "resume_candidates", "trusted_checkpoint_globals",
           "unloadable_reason", "UnsmoothedValLogProcessor", "TrainableOptimWrapperConstructor",
           "check_trainable_only", "trainable_named_parameters", "FrozenBackboneDDP", "model_device", "unwrap_model"]
