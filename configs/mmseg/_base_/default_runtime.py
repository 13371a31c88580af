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
custom_hooks = [dict(type='NonFiniteLossHook')]
