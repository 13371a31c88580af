# JAFAR (2x) for DINOv3 vits16: a STAND-IN recipe, not the authors'. Their train.py (448 px
# ImageNet, the input downscaled by U(0.25, 0.5), guidance at 224, Cosine + MSE plus a 0.1
# consistency term, AdamW 2e-4, batch 4, 100k steps) is not implemented here; this trains JAFAR
# with LiFT's pair objective (JAFAR(224 px image, F(224)) vs F(448), cosine distance) and their
# optimiser. It exists so that JAFAR trains like every registered upsampler; for the authors'
# weights use tools/convert_weights.py jafar. See docs/methods.md.
#   python tools/distill.py configs/distill/jafar_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='jafar', factor=2, zero_start=False),
    objective=dict(type='LiftObjective', scales=1),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=4, dataset=dict(size=448))
val_dataloader = dict(dataset=dict(size=448))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=100000, val_interval=5000)
