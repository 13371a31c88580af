# Linear probe on DINOv3 ViT-S/16: Meta's weight file (its hash suffix is checked) and the head's width
_base_ = './dinov3_linear.py'
model = dict(
    backbone=dict(arch='vits16', weights='checkpoints/dinov3_vits16_pretrain_lvd1689m-08c60483.pth'),
    decode_head=dict(in_channels=384))
