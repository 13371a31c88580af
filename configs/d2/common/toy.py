"""The embedded default: ViTDet Mask R-CNN over frozen DINOv3-S on the toy instances.

Data: brixel_plugins.toydata.instances (written on first use under work_dirs/toydata/instances):
64 training and 16 validation images of 128 x 128 px, four categories of textured shapes, half of
them 5-12 px across, and 2-4 px wide bars. Model: the COCO configs' detector with the anchors
scaled to the small images (8-128 px instead of 32-512 px), fewer proposals and ROI samples, and
a pyramid and heads of the same structure at a quarter of the width, so a CPU trains it in
minutes. Schedule: ViTDet's shape over ``train.max_iter`` iterations, AdamW at a higher lr (1e-3)
than COCO's 1e-4 for the short run, batch 4.
"""
import detectron2.data.transforms as T
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from brixel_plugins.d2 import toy_instances

from .dinov3_vitdet import model, optimizer, train, use_dinov3, vitdet_schedule

image_size = 128

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = L(toy_instances)(split="train")
dataloader.train.mapper.augmentations = [L(T.RandomFlip)(horizontal=True)]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset.names = L(toy_instances)(split="val")
# pictures of any size fit the square padding, as at COCO's 1024: the longest side goes to
# model.backbone.square_pad (image_size; the toy images have it already, other pictures, e.g.
# tools/d2_infer.py's, are resized), and follows it when square_pad is overridden
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length="${model.backbone.square_pad}", max_size="${model.backbone.square_pad}"),
]
dataloader.test.num_workers = 0

model.roi_heads.num_classes = 4
# ViTDet's pyramid and heads (LN convs, 4conv1fc box head, 4conv mask head) at a quarter of their
# width: at full width they cost a CPU ~100 GFLOPs per training image, far more than the ViT here.
width = 64
model.backbone.out_channels = width
model.proposal_generator.head.in_channels = width
model.roi_heads.box_head.input_shape = ShapeSpec(channels=width, height=7, width=7)
model.roi_heads.box_head.conv_dims = [width] * 4
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.box_predictor.test_topk_per_image = 50
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=width, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [width] * 5
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (200, 100)
model.roi_heads.batch_size_per_image = 32

train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.amp.enabled = train.device == "cuda"
train.max_iter = 60
train.eval_period = train.max_iter  # once, at the end
train.checkpointer = dict(period=train.max_iter, max_to_keep=2)
train.log_period = 10
train.seed = 0
lr_multiplier = vitdet_schedule(train.max_iter, warmup_iters=10)
optimizer.lr = 1e-3


def use_toy_backbone(model, train, upsampler=None, upsampler_weights=None):
    """DINOv3-S (random init from init_seed, recorded in checkpoints; the demo passes DINOV3_WEIGHTS)
    + ``upsampler`` under the pyramid."""
    use_dinov3(model, arch="vits16", upsampler=upsampler, square_pad=image_size)
    model.backbone.net.weights = None
    model.backbone.net.init_seed = 0
    if upsampler is not None and upsampler != "bilinear":
        model.backbone.net.upsampler.weights = upsampler_weights
    train.output_dir = f"work_dirs/d2_toy/{upsampler or 'none'}"
    return model
