# AnyUp (2x) for DINOv3 vits16, the authors' release recipe (local crops against the backbone at
# high resolution, consistency and downsampling terms). AnyUp is trained once and applies to any
# backbone and layer: the authors' weights load with tools/convert_weights.py anyup.
#   python tools/distill.py configs/distill/anyup_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/anyup.py']
model = dict(backbone=dict(arch='vits16'))
