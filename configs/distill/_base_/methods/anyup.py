# AnyUp's release recipe (the authors' train.py and config/*): 448 px images (short side resized to
# 448, bilinear, centre crop); guidance = the image at 224 px and its last-layer features F(224);
# AnyUp's 2x output (the 448 image's token grid) cut at 4 random patch-aligned 224 px crops per image
# and compared with the backbone run on each crop (Cosine + range-normalised MSE); + 0.1 x the
# consistency of AnyUp's output at 224 px under photometric augmentation of the guidance (same
# features); + 0.1 x the output area-averaged back to F(224) vs F(224); AdamW lr 2e-4, betas
# (0.9, 0.999), wd 1e-5, constant lr; batch 4; 100k steps; bf16 autocast; seed 0; random init
# (zero_start=False). Departures (one backbone per run, the augmentations' probabilities, no
# min-side filter): docs/recipes.md.
_base_ = ['../default_runtime.py', '../datasets/folder.py']

model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='anyup', factor=2, zero_start=False),
    objective=dict(type='AnyUpObjective', crops=4, lambda_consistency=0.1, lambda_downsample=0.1,
                   augment=dict(type='PhotometricAugment')),
    teacher_size=448,
    student_size=224)

train_dataloader = dict(batch_size=4, dataset=dict(size=448, crop=dict(_delete_=True, type='ShortSideCentreCrop')))
val_dataloader = dict(batch_size=4, dataset=dict(size=448, crop=dict(_delete_=True, type='ShortSideCentreCrop')))

optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-5))
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_iters=100000, val_interval=5000)
default_hooks = dict(checkpoint=dict(interval=20000))
