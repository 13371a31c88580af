# JAFAR (2x) for DINOv3 vits16, the authors' release recipe (no high-resolution teacher):
#   python tools/distill.py configs/distill/jafar_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/jafar.py']
model = dict(backbone=dict(arch='vits16'))
