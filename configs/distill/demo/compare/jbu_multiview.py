# JBU from bilinear interpolation on our multi-view default (MultiViewObjective: homography views,
# the attention downsampler, PHI-S space), NAdam 1e-4, the demo's random crops.
_base_ = ['./jbu_zero_start.py']

model = dict(objective=dict(_delete_=True, type='MultiViewObjective', num_jitters=5, phi_s=True))
optim_wrapper = dict(_delete_=True, type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='NAdam', lr=1e-4))
custom_hooks = [dict(type='PhiSStatsHook', num_batches=8), dict(type='ExportUpsamplerHook')]

demo = dict(label='JBU multi-view default', train_crop='random')
