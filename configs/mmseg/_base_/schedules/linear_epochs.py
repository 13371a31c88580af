# Linear-probe schedule of the BRIXEL protocol: AdamW lr 1e-3 (torch's default weight decay 0.01),
# constant learning rate, seed 42, whole epochs; validation and a checkpoint every 5 epochs.
# Children set train_cfg.max_epochs (ADE20K 40, Cityscapes 50, VOC 20).
_base_ = '../default_runtime.py'
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01),
    constructor='TrainableOptimWrapperConstructor')  # the frozen backbone never enters the optimizer
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=40, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
log_processor = dict(by_epoch=True)
default_hooks = dict(
    logger=dict(log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval=5))
randomness = dict(seed=42)
