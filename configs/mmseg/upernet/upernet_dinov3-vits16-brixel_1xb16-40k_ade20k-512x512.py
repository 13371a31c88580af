# ADE20K UPerNet (mmseg's MultiLevelNeck + UPerHead + FCN auxiliary head) on frozen DINOv3 ViT-S/16
# + BRIXEL 4x: pyramid strides 4 (BRIXEL), 8, 16, 32 (layers 5, 8, 11). DINOv3 protocol data
# (crop 512, 40k iterations, batch 16, sliding-window test); AdamW 1e-4 for the larger heads.
_base_ = ['../_base_/models/dinov3_upernet.py', '../_base_/datasets/ade20k_512x512.py',
          '../_base_/schedules/iters_40k.py']
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        weights='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth',
        upsampler=dict(_delete_=True, type='brixel', weights='work_dirs/brixel_vits16/best_upsampler.safetensors')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=0.01))
