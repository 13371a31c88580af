# Frozen DINOv3 + upsampler (backbone) -> linear probe (Dropout2d 0.1 -> BN -> 1x1 conv), the
# readout of the DINOv3 and BRIXEL evaluation protocols. Only the head trains (and the upsampler
# with backbone.train_upsampler=True).
_base_ = ['./dinov3_featurizer.py']
# BN: SyncBN in multi-GPU runs (default_runtime's model_wrapper_cfg converts it on CUDA)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(train_upsampler=False),
    decode_head=dict(
        type='LinearProbeHead',
        in_channels=384,
        in_index=0,  # the dense map
        num_classes=150,
        dropout_ratio=0.1,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
