# FeatUp JBU (16x at 224 px) for DINOv3 vith16plus, the authors' release recipe:
#   python tools/distill.py configs/distill/jbu_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/featup_jbu.py']
model = dict(backbone=dict(arch='vith16plus'))
