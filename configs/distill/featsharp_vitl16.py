# FeatSharp (2x) for DINOv3 vitl16: multi-view consistency, NAdam 5e-4, 3000 steps
_base_ = ['./_base_/methods/multiview.py']
model = dict(backbone=dict(arch='vitl16'))
