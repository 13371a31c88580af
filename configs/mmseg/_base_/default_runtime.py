# Runtime shared by every configs/mmseg config: mmseg's own, plus crash-safe checkpoints, a stop on
# NaN/Inf losses and trusted checkpoint loading (brixel_plugins.engine). mmseg's stock tools/train.py
# runs these configs too: custom_imports registers our components in mmseg's registries.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['brixel_plugins.mmseg'], allow_failed_imports=False)

runner_type = 'SafeRunner'  # weights_only checkpoint loading; --resume falls back to the newest loadable
env_cfg = dict(cudnn_benchmark=False)
# mmseg's base names its visualizer 'visualizer': a second Runner in one process would reuse the
# first one's (and write into its folder); without a name each run gets its own
visualizer = dict(_delete_=True, type='SegLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')])
log_processor = dict(type='UnsmoothedValLogProcessor', by_epoch=False)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=2,
                    save_best='mIoU', rule='greater', backend_args=dict(backend='atomic_local')),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# LabelRangeHook: a label outside the model's classes stops the run naming its file, before the model sees it
custom_hooks = [dict(type='NonFiniteLossHook'), dict(type='LabelRangeHook')]
# multi-GPU / multi-node (torchrun ... --launcher pytorch): device ids from the model's device (N CPU
# processes run on gloo too), the frozen DINOv3 and a frozen upsampler out of the gradient buckets, no
# unused-parameter search, BN -> SyncBN on CUDA (torch's SyncBatchNorm has no CPU kernel: on the CPU
# each process normalises its own batch and rank 0's running statistics are saved)
model_wrapper_cfg = dict(type='FrozenBackboneDDP', broadcast_buffers=False, find_unused_parameters=False,
                         sync_bn=True)
