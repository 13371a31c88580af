# ADE20K linear probe, BRIXEL protocol (256 px, batch 32, 40 epochs): DINOv3 ViT-S/16 + no upsampler (stride-16 map)
_base_ = ['../_base_/models/linear_vits16.py', '../_base_/datasets/ade20k_256x256.py',
          '../_base_/schedules/linear_epochs.py']
model = dict(backbone=dict(upsampler=None))
