# FeatUp's JBU release recipe (train_jbu_upsampler.py with jbu_upsampler.yaml): 16x (4 JBU layers)
# at 224 px, images Resize(224) + CenterCrop(224) (bilinear); 5 views per step, the upsampler re-run
# per view; one jitter per batch: reflect-pad 20 px, zoom U[1, 2) with probability 0.5, an integer
# crop anywhere, horizontal flip (no rotation, no perspective); ChannelNorm feature space; MSE on a
# fresh random 30-d projection per view, weighted by a learned per-pixel uncertainty (1x1 conv,
# err / (2 sigma^2) + log sigma); CRF 0.001 on the first view; TV 0; attention downsampler kernel
# 16 / stride 16 with a 5x5 sigma-1 Gaussian blur, dropout 0.2, 20% logit mask, noisy init; NAdam
# lr 1e-3 for all of it, no schedule; gradient norm clipped to 1e-4 for the first 10 steps; 1 epoch,
# batch 4 (COCO-Stuff train in the release); random init (zero_start=False).
# Validation compares the upsampler at 224 px with DINOv3 at 224 x 16 = 3584 px (a GPU's job).
# Departure: the upsampler reads the backbone's normalised maps (our interface) and ChannelNorm is
# the space the comparison is made in. See docs/recipes.md.
_base_ = ['../default_runtime.py', '../datasets/folder.py']

student_size = 224
factor = 16
model = dict(
    type='DistillModel',
    backbone=dict(arch='vits16', weights=None, autocast='bf16'),
    upsampler=dict(type='jbu', factor=factor, zero_start=False),
    objective=dict(
        type='FeatUpObjective', num_jitters=5,
        jitter=dict(type='FeatUpJitter', max_pad=20, max_zoom=2.0, zoom_prob=0.5, flip=True),
        downsampler=dict(type='AttentionDownsampler', blur_size=5, blur_sigma=1.0, dropout=0.2,
                         logit_dropout=0.2, init_noise=0.01, init='featup'),  # kernel = stride = factor
        feature_space=dict(type='ChannelNorm'),
        projection=dict(type='RandomProjection', dim=30),
        uncertainty=dict(type='UncertaintyWeighting', kernel_size=1, hidden=None, log_variance_scale=2.0,
                         offset=0.1, min_log_variance=-18.420680743952364,  # 2 log(1e-4): sigma >= 1e-4
                         init_scale=0.1, error_weight=0.5),
        crf=dict(type='SampledCRFLoss', n_samples=1000, alpha=0.1, beta=0.15, gamma=0.005, w1=10.0, w2=3.0,
                 shift=0.0),
        crf_weight=0.001),
    teacher_size=student_size,  # training needs no high-resolution teacher
    student_size=student_size)

train_dataloader = dict(
    batch_size=4, dataset=dict(size=student_size, crop=dict(_delete_=True, type='ShortSideCentreCrop')))
val_dataloader = dict(
    batch_size=1, dataset=dict(size=student_size * factor, crop=dict(_delete_=True, type='ShortSideCentreCrop')))

# one learning rate for upsampler, downsampler and uncertainty net; clip 1e-4 for 10 steps, then none
optim_wrapper = dict(type='WarmupClipOptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='NAdam', lr=1e-3),
                     clip_grad=dict(max_norm=float('inf')), warmup_max_norm=1e-4, warmup_steps=10)
param_scheduler = []
train_cfg = dict(type='DistillLoop', max_epochs=1, val_interval=5000)
