# DINOv3's linear protocol schedule: 40k iterations, AdamW lr 1e-3 weight decay 1e-3, 1500 linear
# warm-up iterations then cosine decay to 0; validation and a checkpoint every 4000 iterations.
_base_ = '../default_runtime.py'
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-3),
    constructor='TrainableOptimWrapperConstructor')  # the frozen backbone never enters the optimizer
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', T_max=38500, eta_min=0.0, by_epoch=False, begin=1500, end=40000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
