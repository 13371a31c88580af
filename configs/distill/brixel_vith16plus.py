# BRIXEL for DINOv3 vith16plus:
# python tools/distill.py configs/distill/brixel_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vith16plus'))
