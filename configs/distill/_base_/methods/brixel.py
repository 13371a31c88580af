# BRIXEL recipe: teacher DINOv3 at 1024 px, student at 256 px (4x bicubic antialiased
# downsample) + adapter/head; L1 + 1.0 edge + 0.1 spectral; Adam, no weight decay, lr 1e-4 for the
# first epoch then 1e-3; batch 16; 3 epochs; bf16 autocast on CUDA; best checkpoint by val loss.
# Departures from the release (both one switch away): the objective's terms are scale-free
# (objective=dict(type='BrixelObjective', release=True) is the authors' exact formula) and the
# upsampler starts from bilinear interpolation (upsampler=dict(type='brixel', zero_start=False):
# the release's random start).
# Backbone weights: --weights FILE (or model.backbone.weights=FILE); none = random init (warned).
_base_ = ['../default_runtime.py', '../datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='brixel', zero_start=True),
    objective=dict(type='BrixelObjective', lambda_edge=1.0, lambda_spectral=0.1),
    teacher_size=1024,
    student_size=256)

# the release's data policy: each side < 1024 black-padded to 1024 on its own, resized to cover
# 1024 (never enlarged), centre-cropped
train_dataloader = dict(batch_size=16, dataset=dict(size=1024, crop=dict(_delete_=True, type='BrixelReleaseCanvas')))
val_dataloader = dict(dataset=dict(size=1024, crop=dict(_delete_=True, type='BrixelReleaseCanvas')))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='Adam', lr=1e-4, weight_decay=0.0))
# 1e-4 for epoch 0, x10 = 1e-3 from the first iteration of epoch 1 (MultiStepLR's milestone, converted
# to iterations, takes effect at iteration epoch_length; ConstantLR(end=1) would switch one early)
param_scheduler = [dict(type='MultiStepLR', milestones=[1], gamma=10.0, by_epoch=True, convert_to_iter_based=True)]
train_cfg = dict(type='DistillLoop', max_epochs=3, val_interval=1000)
