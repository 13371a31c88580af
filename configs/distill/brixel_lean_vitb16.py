# BRIXEL-lean for DINOv3 vitb16 (the BRIXEL recipe, the lean upsampler):
# python tools/distill.py configs/distill/brixel_lean_vitb16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vitb16'), upsampler=dict(_delete_=True, type='brixel_lean', zero_start=True))
