# LoftUp (16x at 224 px) for DINOv3 vith16plus, the authors' stage-1 recipe (SAM masks replaced by SLIC superpixels):
#   python tools/distill.py configs/distill/loftup_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/loftup.py']
model = dict(backbone=dict(arch='vith16plus'))
