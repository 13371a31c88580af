# LoftUp (2x) for DINOv3 vits16: a STAND-IN recipe, not the authors'. Their two stages (SA-1B
# with SAM-mask-refined pseudo-targets, then self-distillation from high-resolution crops with an
# EMA teacher) exist only on a later, "provisional, not fully tested" branch of their repository
# and are not implemented here; this trains LoftUp with LiFT's pair objective (LoftUp(224 px image,
# F(224)) vs F(448), cosine distance: LoftUp's output is LayerNorm'd, cosine ignores the scale).
# It exists so that LoftUp trains like every registered upsampler; for the authors' weights use
# tools/convert_weights.py loftup. See docs/methods.md.
#   python tools/distill.py configs/distill/loftup_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='loftup', factor=2, zero_start=False),
    objective=dict(type='LiftObjective', scales=1),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=4, dataset=dict(size=448))
val_dataloader = dict(dataset=dict(size=448))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-5))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=100000, val_interval=5000)
