# LiFT (2x) for DINOv3 vith16plus, the authors' release recipe on the last-layer tokens:
#   python tools/distill.py configs/distill/lift_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/lift.py']
model = dict(backbone=dict(arch='vith16plus'))
