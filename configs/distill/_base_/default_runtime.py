# Shared runtime for tools/distill.py (mmengine Runner). Everything here is overridable with
# --cfg-options, e.g. default_hooks.checkpoint.interval=500.
default_scope = 'brixel_plugins'
custom_imports = dict(imports=['brixel_plugins.distill'], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/distill.py switches to gloo without CUDA
)
randomness = dict(seed=0)  # fixed: the data order and per-step RNG derive from it (exact resume)

# validation metrics logged as measured (mmengine's default smooths every key containing 'loss')
log_processor = dict(type='UnsmoothedValLogProcessor', by_epoch=False, window_size=20)
log_level = 'INFO'
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # progress, ETA, losses, lr; validation scalars at the iteration they were measured (not the epoch)
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # new checkpoint first, then the last_checkpoint pointer, then deletions; never NaN weights
    checkpoint=dict(
        type='SafeCheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=3, save_last=True,
        save_best='distill/loss', rule='less',  # full best checkpoint, by validation loss
        backend_args=dict(backend='atomic_local')),  # temp file + fsync + rename
    # a NaN/Inf loss stops the run (non-zero exit) before anything of that iteration is written
    non_finite=dict(type='NonFiniteLossHook', max_skipped_steps=0),
    # images that fail to decode: reported once at the end of the epoch, not counted in exports
    skipped_images=dict(type='SkippedImagesHook'),
)
# upsampler-only safetensors: best_upsampler.safetensors and upsampler.safetensors (last)
custom_hooks = [dict(type='ExportUpsamplerHook')]

visualizer = dict(type='Visualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])

# used only when launched distributed (torchrun ... --launcher pytorch; N GPUs or N CPU processes):
# device ids from the model's device, the frozen DINOv3 out of the gradient buckets, no search for
# unused parameters (every trainable one reaches the loss: tests/test_trainable_parameters.py),
# BatchNorm synchronised over the global batch on CUDA as in the BRIXEL release (torch has no
# SyncBatchNorm on the CPU: there each process normalises its own batch)
model_wrapper_cfg = dict(type='FrozenBackboneDDP', find_unused_parameters=False, sync_bn=True)

val_cfg = dict(type='ValLoop')
val_evaluator = dict(type='DistillMetric')
load_from = None
resume = False
