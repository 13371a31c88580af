# AnyUp (2x) for DINOv3 vits16: a STAND-IN recipe, not the authors'. AnyUp needs no training per
# backbone: use the authors' weights (tools/convert_weights.py anyup). Their train.py (local-crop
# objective over several backbones) is not implemented here; this trains or fine-tunes AnyUp on one
# backbone with LiFT's pair objective (AnyUp(224 px image, F(224)) vs F(448), cosine distance) and
# JAFAR's optimiser, so that AnyUp trains like every registered upsampler. See docs/methods.md.
#   python tools/distill.py configs/distill/anyup_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='anyup', factor=2, zero_start=False),
    objective=dict(type='LiftObjective', scales=1),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=4, dataset=dict(size=448))
val_dataloader = dict(dataset=dict(size=448))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=100000, val_interval=5000)
