# LiFT recipe: 448 px images; cosine distance at two scales, LiFT(x/2, F(x/2)) vs F(x) and
# LiFT(x/4, F(x/4)) vs F(x/2); Adam lr 1e-3; batch 256; 5 epochs (ImageNet in the paper).
_base_ = ['../default_runtime.py', '../datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='lift', factor=2, zero_start=True),  # zero_start=False: the release's random start
    objective=dict(type='LiftObjective', scales=2),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=256, num_workers=8, dataset=dict(size=448))
val_dataloader = dict(batch_size=16, dataset=dict(size=448))

optim_wrapper = dict(type='OptimWrapper', constructor='DistillOptimWrapperConstructor',
                     optimizer=dict(type='Adam', lr=1e-3))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_epochs=5, val_interval=1000)
