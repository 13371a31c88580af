"""COCO with ViTDet's large-scale jitter (LSJ) at 1024 px, images read as RGB.

detectron2 keeps this loader in its source tree (projects/ViTDet), not in the pip package; it is
rebuilt here from what the package ships: the model zoo's COCO loader and its transforms.
Training: horizontal flip, resize to 0.1-2.0 x 1024, crop 1024 (boxes recomputed from the
cropped masks); testing: longest side 1024. Batch 64 over all GPUs.
"""
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

image_size = 1024

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train mapper's format
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
