# Frozen DINOv3 + upsampler (backbone) -> linear probe (Dropout2d 0.1 -> BN -> 1x1 conv), the
# readout of the DINOv3 and BRIXEL evaluation protocols. Only the head trains (and the upsampler
# with backbone.train_upsampler=True).
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN for multi-GPU runs
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
        upsampler=dict(type='bilinear', factor=4),
        train_upsampler=False),
    decode_head=dict(
        type='LinearProbeHead',
        in_channels=384,
        in_index=0,  # the dense map
        num_classes=150,
        dropout_ratio=0.1,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
