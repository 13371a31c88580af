# The toy dataset of the embedded default (brixel_plugins.toydata.segmentation): 128 px photo crops
# with thin textured shapes, written to data_root on first use.
dataset_type = 'ToyShapesDataset'
data_root = 'data/toy_shapes'
generate = dict(num_train=64, num_val=16, size=128, seed=0)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckLabelMap'),  # the label map has its image's size, or the file is named
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
val_pipeline = [  # scoring (val and test dataloaders, tools/test.py)
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckLabelMap'),  # the label map has its image's size, or the file is named
    dict(type='PackSegInputs'),
]
# what mmseg's inference API (init_model + inference_model, tools/infer.py) runs on a picture
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, generate=generate,
                 data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, generate=generate,
                 data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
                 pipeline=val_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
