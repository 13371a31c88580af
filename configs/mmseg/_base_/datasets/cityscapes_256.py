# Cityscapes (19 classes), BRIXEL protocol: short side 256 (2048x1024 -> 512x256) for training and
# scoring (labels resized with the image). mmseg's Cityscapes base provides the rest.
_base_ = 'mmseg::_base_/datasets/cityscapes.py'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='ResetOriShape'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=16,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
