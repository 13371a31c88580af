# What every DINOv3 segmenter here shares: the frozen DINOv3 + upsampler backbone (the dense map
# first, then the stride-16 layers of out_indices) and the pre-processing it needs. The heads are
# in dinov3_linear.py (linear probe) and dinov3_upernet.py (UPerNet).
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],  # ImageNet, RGB 0-255
    bgr_to_rgb=True,
    pad_val=0, seg_pad_val=255,
    size_divisor=16,  # DINOv3's patch: any image size trains ...
    test_cfg=dict(size_divisor=16))  # ... and tests (padding is cropped from the prediction)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DINOv3Featurizer',
        arch='vits16',
        weights=None,  # Meta's DINOv3 file: set by models/linear_<arch>.py
        upsampler=dict(type='bilinear', factor=4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
