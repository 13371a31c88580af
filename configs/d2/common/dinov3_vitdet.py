"""ViTDet Mask R-CNN on COCO over a frozen DINOv3 (+ an upsampler), ViTDet's 100-epoch schedule.

The detector is detectron2's model zoo ``common/models/mask_rcnn_vitdet.py`` (reused as shipped:
ImageNet RGB mean/std in 0-255, ``input_format="RGB"``, LN heads, 4conv1fc box head); only its
backbone changes (:func:`use_dinov3`). The optimizer is ViTDet's AdamW without layer-wise lr
decay: the ViT is frozen and never reaches the optimizer. Mixed precision is bfloat16 on CUDA.

Files the variants read (change them with ``model.backbone.net.weights=...`` and
``model.backbone.net.upsampler.weights=...``):
- DINOv3: ``checkpoints/dinov3_<arch>_pretrain_lvd1689m-<hash>.pth`` (Meta's file names);
- upsamplers: ``work_dirs/<method>_<arch>/best_upsampler.safetensors`` (tools/distill.py's
  export for configs/distill/<method>_<arch>.py); AnyUp: ``checkpoints/anyup_<arch>.safetensors``
  (the authors' one release for every backbone, converted for ``arch`` by tools/convert_weights.py);
  bilinear has no weights.

The dense map's stride is the config's, not the file's (``DENSE_FACTOR``): 4 for BRIXEL, AnyUp and
bilinear, 8 for LiFT, JBU, FeatSharp, JAFAR and LoftUp. A file at another factor is refused, except
a JBU stack, whose first layers serve (the JBU recipe distils 16x = four 2x layers; the first is the
2x JBU).
"""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from brixel_plugins.backbones.dinov3 import ARCHS
from brixel_plugins.d2 import DINOv3Backbone, UpsampledFeaturePyramid, ViTDetFeaturePyramid

from .coco_loader_lsj import dataloader  # noqa: F401 (part of this config)

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True  # bfloat16 (tools/d2_train.py)
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # the backbone loads its own weights; nothing else is pretrained



def vitdet_schedule(max_iter, warmup_iters=250):
    """ViTDet's schedule: linear warm-up from 0.001x, then 1x, 0.1x from 88.9% and 0.01x from
    96.3% of the iterations (100 epochs: 184375 iterations x 64 images / 118k images)."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01],
                                             milestones=[round(max_iter * 163889 / 184375),
                                                         round(max_iter * 177546 / 184375)],
                                             num_updates=max_iter),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=0.001,
    )


train.max_iter = 184375
lr_multiplier = vitdet_schedule(train.max_iter)
optimizer = model_zoo.get_config("common/optim.py").AdamW  # lr 1e-4, weight decay 0.1 (0 for norms)


def dinov3_file(arch):
    return f"checkpoints/dinov3_{arch}_pretrain_lvd1689m-{ARCHS[arch].hash_suffix}.pth"


# upsampling factor of each variant: dense map at stride 16 / factor (4 or 8, as documented)
DENSE_FACTOR = dict(bilinear=4, brixel=4, anyup=4, lift=2, jbu=2, featsharp=2, jafar=2, loftup=2)


def upsampler_file(method, arch):
    # AnyUp's weights are trained once for every backbone; the others are distilled per backbone
    if method == "anyup":
        return f"checkpoints/anyup_{arch}.safetensors"
    return f"work_dirs/{method}_{arch}/best_upsampler.safetensors"


def use_dinov3(model, arch, upsampler=None, square_pad=1024):
    """Put frozen DINOv3 ``arch`` + ``upsampler`` (a registered name, or None for plain ViTDet)
    under ``model``'s ViTDet pyramid, keeping the pyramid's stock settings (256 channels, LN,
    LastLevelMaxPool top block)."""
    net = dict(arch=arch, weights=dinov3_file(arch), autocast="bf16")
    if upsampler is not None:
        net["upsampler"] = dict(type=upsampler, factor=DENSE_FACTOR[upsampler])
    if upsampler not in (None, "bilinear"):
        net["upsampler"]["weights"] = upsampler_file(upsampler, arch)
    backbone = model.backbone
    if upsampler is None:
        backbone._target_ = ViTDetFeaturePyramid
        backbone.in_feature = "last_feat"
    else:
        backbone._target_ = UpsampledFeaturePyramid
        for key in ("in_feature", "scale_factors"):  # UpsampledFeaturePyramid derives them from the net
            del backbone[key]
    backbone.net = L(DINOv3Backbone)(**net)
    backbone.square_pad = square_pad
    return model


def use_cascade(model):
    """ViTDet's Cascade Mask R-CNN heads: three 4conv1fc LN box heads at IoU 0.5, 0.6, 0.7."""
    roi_heads = model.roi_heads
    for key in ("box_head", "box_predictor", "proposal_matcher"):
        roi_heads.pop(key)
    roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=256, height=7, width=7),
                                         conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm="LN")
                   for _ in range(3)],
        box_predictors=[L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=1024), test_score_thresh=0.05,
                                                box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                                                cls_agnostic_bbox_reg=True, num_classes="${...num_classes}")
                        for w1, w2 in [(10, 5), (20, 10), (30, 15)]],
        proposal_matchers=[L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
                           for th in [0.5, 0.6, 0.7]],
    )
    return model
