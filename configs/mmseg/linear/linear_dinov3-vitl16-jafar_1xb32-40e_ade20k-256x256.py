# ADE20K linear probe, BRIXEL protocol (256 px, batch 32, 40 epochs): DINOv3 ViT-L/16 + jafar
# (weights exported by tools/distill.py)
_base_ = ['../_base_/models/linear_vitl16.py', '../_base_/datasets/ade20k_256x256.py',
          '../_base_/schedules/linear_epochs.py']
model = dict(backbone=dict(upsampler=dict(
    _delete_=True, type='jafar', weights='work_dirs/jafar_vitl16/best_upsampler.safetensors')))
