# Cityscapes linear probe, BRIXEL protocol (short side 256, batch 16, 50 epochs): ViT-S/16 + BRIXEL
_base_ = ['../_base_/models/linear_vits16.py', '../_base_/datasets/cityscapes_256.py',
          '../_base_/schedules/linear_epochs.py']
model = dict(backbone=dict(upsampler=dict(
    _delete_=True, type='brixel', weights='work_dirs/brixel_vits16/best_upsampler.safetensors')),
    decode_head=dict(num_classes=19))
train_cfg = dict(max_epochs=50)
