# FeatSharp's release recipe (the authors' training harness), for DINOv3 (patch 16, so R = 512 as
# for RADIO): the student sees the picture at R = 512 px plus u x u = 2 x 2 tiles of it at 1024 px;
# the main view + 5 jitters (shared zoom 1-2 and crop; per view zoom log-uniform 0.95..1/0.95,
# rotation +-5 deg, perspective 0.01-0.05, no flip) with validity masks; attention downsampler
# (5x5 Gaussian blur, 9x9 window, 20% logit dropout, stride u); targets = PHI-S(backbone(view
# downsampled bilinearly)) + the de-bias map; MSE x validity x seam weight 2.0 on tile borders x
# learned uncertainty exp(-s) + s/2 (5x5 conv net C -> 256 -> 1); NAdam 5e-4 (JBU 1e-4, spectral
# scales 5e-5 with weight decay 0.01, uncertainty 1e-5), 100-step linear warm-up from 0.1x then
# cosine, gradient clipping 1e-4 for 10 steps then 5.0, spectral reparametrisation of the fusion
# block's linears (baked into plain weights in the exported file), fp32, batch 4, 3000 steps.
# Validation: the upsampler at 512 px vs DINOv3 at 1024 px. See docs/featsharp.md.
_base_ = ['../default_runtime.py', '../datasets/folder.py']

student_size = 512
factor = 2
model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast=None),  # fp32, as released
    upsampler=dict(type='featsharp', factor=factor, window=7, num_heads=16,
                   debias_hw=(student_size // 16, student_size // 16), spectral_reparam=True),
    objective=dict(type='FeatSharpObjective', num_jitters=5, seam_weight=2.0, seam_band=2),
    teacher_size=student_size * factor,
    student_size=student_size)

# images arrive at u * R: the objective zooms/crops them (shared by all views) and cuts the tiles
train_dataloader = dict(batch_size=4, dataset=dict(size=student_size * factor, crop='center'))
val_dataloader = dict(dataset=dict(size=student_size * factor))

optim_wrapper = dict(
    type='WarmupClipOptimWrapper', constructor='TrainableOptimWrapperConstructor',
    optimizer=dict(type='NAdam', lr=5e-4),
    clip_grad=dict(max_norm=5.0), warmup_max_norm=1e-4, warmup_steps=10,
    paramwise_cfg=dict(groups=[
        dict(pattern=r'parametrizations\.weight\.0\.(parts\.\d+\.)?sn_scale$', lr=5e-5, weight_decay=0.01),
        dict(pattern=r'^upsampler\.jbu\.', lr=1e-4),
        dict(pattern=r'^objective\.uncertainty\.', lr=1e-5),
    ]))
max_iters = 3000
warmup_iters = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, end_factor=1.0, begin=0, end=warmup_iters, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_iters - warmup_iters, eta_min=0.0, begin=warmup_iters,
         end=max_iters, by_epoch=False),
]
train_cfg = dict(type='DistillLoop', max_iters=max_iters, val_interval=500)
custom_hooks = [dict(type='PhiSStatsHook', num_batches=50), dict(type='ExportUpsamplerHook')]
