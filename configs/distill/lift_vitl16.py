# LiFT (2x) for DINOv3 vitl16, the authors' release recipe on the last-layer tokens:
#   python tools/distill.py configs/distill/lift_vitl16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/lift.py']
model = dict(backbone=dict(arch='vitl16'))
