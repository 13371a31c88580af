# FeatSharp (2x) for DINOv3 vitb16, the authors' recipe:
# python tools/distill.py configs/distill/featsharp_vitb16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/featsharp.py']
model = dict(backbone=dict(arch='vitb16'))
