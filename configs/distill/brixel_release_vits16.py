# BRIXEL for DINOv3 vits16, the authors' release recipe exactly (brixel_vits16.py departs where
# docs/recipes.md says): the release loss formula (raw L1, raw edge MSE with a randomised PCA,
# unshifted spectrum with bins from int(0.3 * 24) = 7) and the release's random init; from the
# base: each image side shorter than 1024 black-padded to 1024 on its own, resized to cover 1024
# (never enlarged), centre-cropped; Adam lr 1e-4 for epoch 0, 1e-3 from the first iteration of
# epoch 1; batch 16; 3 epochs.
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vits16'), upsampler=dict(zero_start=False),
             objective=dict(release=True))
