# BRIXEL for DINOv3 vits16: python tools/distill.py configs/distill/brixel_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vits16'))
