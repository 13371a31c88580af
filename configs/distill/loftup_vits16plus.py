# LoftUp (16x at 224 px) for DINOv3 vits16plus, the authors' stage-1 recipe (SAM masks replaced by SLIC superpixels):
#   python tools/distill.py configs/distill/loftup_vits16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/loftup.py']
model = dict(backbone=dict(arch='vits16plus'))
