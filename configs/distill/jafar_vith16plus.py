# JAFAR (2x) for DINOv3 vith16plus, the authors' release recipe (no high-resolution teacher):
#   python tools/distill.py configs/distill/jafar_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/jafar.py']
model = dict(backbone=dict(arch='vith16plus'))
