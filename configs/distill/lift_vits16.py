# LiFT (2x) for DINOv3 vits16
_base_ = ['./_base_/methods/lift.py']
model = dict(backbone=dict(arch='vits16'))
