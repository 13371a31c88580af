# JAFAR (2x) for DINOv3 vitl16: the STAND-IN recipe of jafar_vits16.py (not the authors'; see there), for the
# segmentation and detection configs of this backbone.
#   python tools/distill.py configs/distill/jafar_vitl16.py --data-root DIR --weights FILE
_base_ = ['./jafar_vits16.py']
model = dict(backbone=dict(arch='vitl16'))
