# Frozen DINOv3 + upsampler -> MultiLevelNeck -> UPerHead (+ FCN auxiliary head), mmseg's stock
# heads. The backbone returns (dense map at stride 16/f, then the stride-16 layers of out_indices);
# with a 4x upsampler, neck scales (1, 2, 1, 0.5) make the pyramid strides 4, 8, 16, 32.
_base_ = ['./dinov3_featurizer.py']
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN in multi-GPU runs (default_runtime's model_wrapper_cfg)
model = dict(
    backbone=dict(out_indices=(5, 8, 11)),
    neck=dict(type='MultiLevelNeck', in_channels=[384] * 4, out_channels=384, scales=[1, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[384] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=2,  # stride 16
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))
