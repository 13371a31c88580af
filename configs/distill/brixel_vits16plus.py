# BRIXEL for DINOv3 vits16plus:
# python tools/distill.py configs/distill/brixel_vits16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vits16plus'))
