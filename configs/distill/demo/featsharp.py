# The distillation demo's FeatSharp (tools/demo.py, protocol in brixel_plugins/distill/demo.py):
# the release architecture (real 384 px tiles, 4x4 of them, spectral reparametrisation, NAdam with
# its parameter groups, clipping; featsharp_vits16.py) from bilinear interpolation (zero start), on
# the direct objective JBU uses here, with a 10-iteration warm-up, then constant; the de-bias map
# at the 6x6 student grid; PHI-S fitted on 8 batches. Its release objective compares with
# jittered LOW-resolution views; in the 20 steps the demo could afford with it (6 views per step),
# FeatSharp stayed below JBU (docs/recipes.md).
_base_ = ['../featsharp_vits16.py']

model = dict(
    upsampler=dict(type='featsharp', factor=4, debias_hw=(6, 6), spectral_reparam=True, zero_start=True),
    objective=dict(_delete_=True, type='LiftObjective', scales=1, lambda_l1=1.0))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, end_factor=1.0, begin=0, end=10, by_epoch=False)]
custom_hooks = [dict(type='PhiSStatsHook', num_batches=8), dict(type='ExportUpsamplerHook')]

demo = dict(label='FeatSharp', iters=120, batch_size=2)
