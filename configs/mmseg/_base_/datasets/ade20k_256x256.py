# ADE20K, BRIXEL protocol: short side 256 + centre crop 256 for training and scoring (labels are
# resized and cropped with the image; ResetOriShape scores at that crop). mmseg's ADE20K base
# provides the dataset, folders and IoUMetric.
_base_ = ['mmseg::_base_/datasets/ade20k.py', '../flip_tta.py']
crop_size = (256, 256)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckLabelMap'),  # the label map has its image's size, or the file is named
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
val_pipeline = [  # the scoring protocol (val and test dataloaders, tools/test.py)
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckLabelMap'),  # the label map has its image's size, or the file is named
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='ResetOriShape'),
    dict(type='PackSegInputs'),
]
# what mmseg's inference API (init_model + inference_model, MMSegInferencer, tools/infer.py)
# runs on a picture: the protocol's scale, no crop; the map is resized back to the whole picture
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='PackSegInputs'),
]
tta_pipeline = val_pipeline[:-1] + [{{_base_.flip_tta}}]  # ../flip_tta.py
train_dataloader = dict(
    batch_size=32,
    sampler=dict(type='DefaultSampler', shuffle=True),  # epochs, not mmseg's infinite sampler
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = val_dataloader
