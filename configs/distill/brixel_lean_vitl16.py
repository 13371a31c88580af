# BRIXEL-lean for DINOv3 vitl16 (the BRIXEL recipe, the lean upsampler):
# python tools/distill.py configs/distill/brixel_lean_vitl16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vitl16'), upsampler=dict(_delete_=True, type='brixel_lean', zero_start=True))
