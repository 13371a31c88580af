# The STAND-IN recipe of the upsamplers whose authors' recipes are not implemented yet (AnyUp, JAFAR,
# LoftUp; docs/recipes.md): LiFT's pair objective, the upsampler at 2x on a 224 px image against
# DINOv3 at 448 px, cosine distance, AdamW. A method file sets model.upsampler.type (and its lr).
_base_ = ['../default_runtime.py', '../datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(factor=2, zero_start=False),
    objective=dict(type='LiftObjective', scales=1),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=4, dataset=dict(size=448))
val_dataloader = dict(dataset=dict(size=448))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=100000, val_interval=5000)
