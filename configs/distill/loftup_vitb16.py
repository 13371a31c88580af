# LoftUp (2x) for DINOv3 vitb16: the STAND-IN recipe of loftup_vits16.py (not the authors'; see there), for the
# segmentation and detection configs of this backbone.
#   python tools/distill.py configs/distill/loftup_vitb16.py --data-root DIR --weights FILE
_base_ = ['./loftup_vits16.py']
model = dict(backbone=dict(arch='vitb16'))
