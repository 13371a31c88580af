# Linear probe on DINOv3 ViT-L/16: Meta's weight file (its hash suffix is checked) and the head's width
_base_ = './dinov3_linear.py'
model = dict(
    backbone=dict(arch='vitl16', weights='checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth'),
    decode_head=dict(in_channels=1024))
