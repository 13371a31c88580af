# FeatSharp (2x) for DINOv3 vith16plus, the authors' recipe:
# python tools/distill.py configs/distill/featsharp_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/featsharp.py']
model = dict(backbone=dict(arch='vith16plus'))
