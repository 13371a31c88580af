# JAFAR's release recipe (the authors' train.py with config/base.yaml), on DINOv3: no high-resolution
# teacher. Images Resize(448) + CenterCrop(448) (short side, bilinear), no other augmentation; the
# target is the backbone's own map of the 448 px image (28 x 28 tokens at patch 16); the input is
# the image downscaled by s ~ U(0.25, 0.5) per batch to a multiple of 16 px (112-224 px, 7-14
# tokens: 2x to 4x); the guidance pixels are the image at 224 px; loss Cosine_MSE(JAFAR(224 px,
# F(low), 28 x 28), F(448)) + 0.1 x Cosine_MSE between JAFAR(F(448)) at 224 x 224 guided by a
# blurred / noisy / clamped 224 px image and the same guided by the clean one (detached); AdamW lr
# 2e-4, betas (0.9, 0.999), wd 1e-5, no schedule; batch 4; 100k steps; bf16; seed 0; random init
# (zero_start=False). Departures (docs/recipes.md): the input is the antialiased resize every
# consumer feeds (the release: bilinear), and the clean consistency branch is never noisy.
# Validation compares JAFAR at 224 px (2x) with DINOv3 at 448 px.
_base_ = ['../default_runtime.py', '../datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='jafar', factor=2, zero_start=False),
    objective=dict(type='JafarObjective', low_scale=(0.25, 0.5), guidance_scale=0.5, lambda_consistency=0.1,
                   consistency_size=None, blur_prob=0.5, noise_prob=0.3, noise_std=0.02, clamp=True),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=4, dataset=dict(size=448, crop=dict(_delete_=True, type='ShortSideCentreCrop')))
val_dataloader = dict(dataset=dict(size=448, crop=dict(_delete_=True, type='ShortSideCentreCrop')))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=100000, val_interval=5000)
