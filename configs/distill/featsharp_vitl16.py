# FeatSharp (2x) for DINOv3 vitl16, the authors' recipe:
# python tools/distill.py configs/distill/featsharp_vitl16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/featsharp.py']
model = dict(backbone=dict(arch='vitl16'))
