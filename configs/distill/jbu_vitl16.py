# FeatUp JBU (2x) for DINOv3 vitl16: multi-view consistency, NAdam 1e-4, 3000 steps
_base_ = ['./_base_/methods/multiview.py']
model = dict(backbone=dict(arch='vitl16'), upsampler=dict(_delete_=True, type='jbu', factor=2, zero_start=True))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
