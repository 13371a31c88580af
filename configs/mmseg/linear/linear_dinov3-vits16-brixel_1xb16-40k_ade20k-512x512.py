# ADE20K linear probe, DINOv3's protocol (crop 512, scale 0.5-2, flip, batch 16, 40k iterations,
# AdamW 1e-3 wd 1e-3, warm-up + cosine, sliding-window test 512 / stride 341): ViT-S/16 + BRIXEL
_base_ = ['../_base_/models/linear_vits16.py', '../_base_/datasets/ade20k_512x512.py',
          '../_base_/schedules/iters_40k.py']
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),  # pad every training crop to 512 x 512 for batching
    backbone=dict(upsampler=dict(
        _delete_=True, type='brixel', weights='work_dirs/brixel_vits16/best_upsampler.safetensors')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
