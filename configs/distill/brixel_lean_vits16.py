# BRIXEL-lean for DINOv3 vits16 (the BRIXEL recipe, the lean upsampler):
# python tools/distill.py configs/distill/brixel_lean_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vits16'), upsampler=dict(_delete_=True, type='brixel_lean', zero_start=True))
