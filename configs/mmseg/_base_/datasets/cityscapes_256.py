# Cityscapes (19 classes), BRIXEL protocol: short side 256 (2048x1024 -> 512x256) for training and
# scoring (labels resized with the image). mmseg's Cityscapes base provides the rest.
_base_ = ['mmseg::_base_/datasets/cityscapes.py', '../flip_tta.py']
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckLabelMap'),  # the label map has its image's size, or the file is named
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
    dict(type='PackSegInputs'),
]
val_pipeline = [  # the scoring protocol (val and test dataloaders, tools/test.py)
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckLabelMap'),  # the label map has its image's size, or the file is named
    dict(type='ResizeShortestEdge', scale=256, max_size=100000),
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
    batch_size=16,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=val_pipeline))
test_dataloader = val_dataloader
