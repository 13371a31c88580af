# AnyUp (2x) for DINOv3 vitb16, the authors' release recipe (see anyup_vits16.py):
#   python tools/distill.py configs/distill/anyup_vitb16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/anyup.py']
model = dict(backbone=dict(arch='vitb16'))
