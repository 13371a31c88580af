# LiFT (2x) for DINOv3 vitl16
_base_ = ['./_base_/methods/lift.py']
model = dict(backbone=dict(arch='vitl16'))
