# LiFT (2x) for DINOv3 vitb16
_base_ = ['./_base_/methods/lift.py']
model = dict(backbone=dict(arch='vitb16'))
