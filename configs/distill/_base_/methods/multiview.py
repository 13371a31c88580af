# FeatUp/FeatSharp multi-view consistency: upsample at the student resolution, warp by 5 random
# jitters (zoom, crop, small rotation and perspective, flip), learned attention downsampler, MSE
# against the backbone's features of each jittered view, in PHI-S-normalised space (PHI-S fitted
# by a statistics pass before training). NAdam, batch 4, 3000 steps. Validation: the upsampler
# at student_size vs DINOv3 at student_size x factor.
_base_ = ['../default_runtime.py', '../datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='featsharp', factor=2),
    objective=dict(type='MultiViewObjective', num_jitters=5, phi_s=True,
                   downsampler=dict(type='AttentionDownsampler', kernel_size=None, dropout=0.1),
                   jitter=dict(type='HomographyJitter', max_zoom=1.8, max_rotate_deg=10.0,
                               max_perspective=0.1, flip=True)),
    teacher_size=512,
    student_size=256)

# images arrive at the validation teacher size; training resizes them to student_size
train_dataloader = dict(batch_size=4, dataset=dict(size=512, crop='random', scale=(0.5, 1.0)))
val_dataloader = dict(dataset=dict(size=512))

optim_wrapper = dict(type='OptimWrapper', constructor='DistillOptimWrapperConstructor',
                     optimizer=dict(type='NAdam', lr=5e-4))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=3000, val_interval=500)
custom_hooks = [dict(type='PhiSStatsHook', num_batches=50), dict(type='ExportUpsamplerHook')]
