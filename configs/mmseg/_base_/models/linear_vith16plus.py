# Linear probe on DINOv3 ViT-H+/16: Meta's weight file (its hash suffix is checked) and the head's width
_base_ = './dinov3_linear.py'
model = dict(
    backbone=dict(arch='vith16plus', weights='checkpoints/dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth'),
    decode_head=dict(in_channels=1280))
