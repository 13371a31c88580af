# LoftUp's stage-1 recipe (the authors' branch add_training, train_loftup_stage1.py with
# configs/train_loftup_stage1.yaml and its documented command; the authors call it provisional):
# 16x at 224 px (the output has the image's size), images resized + centre-cropped to 224 (ImageNet
# normalisation), no high-resolution teacher; FeatUp's multi-view reconstruction: 4 views per step
# (reflect pad <= 8 px, zoom up to 1.1, flip), the map downsampled by FeatUp's attention downsampler
# (kernel = stride = 16, 5x5 sigma-1 blur) against the ChannelNorm'd backbone map of the same view,
# MSE on a random 64-d projection; TV 0.001 on |P hr|^2 of the first view; a pseudo-ground-truth
# term (weight 1): the bicubic enlargement of the ChannelNorm'd tokens, pulled 80% towards its mean
# inside each class-agnostic mask; NAdam lr 1e-4, no schedule; gradient norm clipped to 1e-4 for
# the first 10 steps; batch 2 per GPU (4 GPUs); 1 epoch of SA-1B; seed 0; random init.
# Departures (docs/recipes.md): the masks are SLIC superpixels of the image (64 regions), not SAM's
# (the release reads SA-1B's SAM masks; this package ships no SAM); the upsampler reads the
# backbone's normalised maps (our interface), ChannelNorm is the space the comparison is made in;
# the per-picture colour min-max (LoftUp's default here, batch_statistics='image'). Stage 2 (EMA
# teacher on 896 px crops, SAM-refined, affinity loss) is not implemented.
# Validation compares the upsampler at 224 px with DINOv3 at 224 x 16 = 3584 px (a GPU's job).
_base_ = ['../default_runtime.py', '../datasets/folder.py']

student_size = 224
factor = 16
model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='loftup', factor=factor, zero_start=False),
    objective=dict(
        type='LoftUpObjective', stage=1, num_jitters=4,
        jitter=dict(type='FeatUpJitter', max_pad=8, max_zoom=1.1, zoom_prob=0.5, flip=True),
        downsampler=dict(type='AttentionDownsampler', blur_size=5, blur_sigma=1.0, dropout=0.2,
                         logit_dropout=0.2, init_noise=0.01, init='featup'),  # kernel = stride = factor
        feature_space=dict(type='ChannelNorm'),
        projection=dict(type='RandomProjection', dim=64),
        tv_weight=0.001, pseudo_weight=1.0, alpha=0.8, superpixels=64),
    teacher_size=student_size,  # training needs no high-resolution teacher
    student_size=student_size)

train_dataloader = dict(batch_size=2,
                        dataset=dict(size=student_size, crop=dict(_delete_=True, type='ShortSideCentreCrop')))
val_dataloader = dict(batch_size=1,
                      dataset=dict(size=student_size * factor, crop=dict(_delete_=True, type='ShortSideCentreCrop')))

optim_wrapper = dict(type='WarmupClipOptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='NAdam', lr=1e-4),
                     clip_grad=dict(max_norm=float('inf')), warmup_max_norm=1e-4, warmup_steps=10)
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_epochs=1, val_interval=5000)
