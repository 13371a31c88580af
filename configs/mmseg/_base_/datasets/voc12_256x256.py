# Pascal VOC 2012 (21 classes), BRIXEL protocol: short side 256 + centre crop 256 for training and
# scoring, as for ADE20K. mmseg's VOC base provides the dataset, split files and IoUMetric.
_base_ = 'mmseg::_base_/datasets/pascal_voc12.py'
crop_size = (256, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='ResetOriShape'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=32,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
