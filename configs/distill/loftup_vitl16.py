# LoftUp (16x at 224 px) for DINOv3 vitl16, the authors' stage-1 recipe (SAM masks replaced by SLIC superpixels):
#   python tools/distill.py configs/distill/loftup_vitl16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/loftup.py']
model = dict(backbone=dict(arch='vitl16'))
