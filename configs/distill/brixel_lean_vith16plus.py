# BRIXEL-lean for DINOv3 vith16plus (the BRIXEL recipe, the lean upsampler):
# python tools/distill.py configs/distill/brixel_lean_vith16plus.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/brixel.py']
model = dict(backbone=dict(arch='vith16plus'), upsampler=dict(_delete_=True, type='brixel_lean', zero_start=True))
