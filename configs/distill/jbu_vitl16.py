# FeatUp JBU (16x at 224 px) for DINOv3 vitl16, the authors' release recipe:
#   python tools/distill.py configs/distill/jbu_vitl16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/featup_jbu.py']
model = dict(backbone=dict(arch='vitl16'))
