# Linear probe on DINOv3 ViT-B/16: Meta's weight file (its hash suffix is checked) and the head's width
_base_ = './dinov3_linear.py'
model = dict(
    backbone=dict(arch='vitb16', weights='checkpoints/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth'),
    decode_head=dict(in_channels=768))
