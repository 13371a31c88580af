"""For yacs-config users: ``MODEL.DINOV3`` options and a ``BACKBONE_REGISTRY`` builder.

    cfg = get_cfg(); add_dinov3_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_dinov3_vitdet_backbone"
    cfg.MODEL.DINOV3.ARCH, cfg.MODEL.DINOV3.WEIGHTS = "vitb16", "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"
    cfg.MODEL.DINOV3.UPSAMPLER, cfg.MODEL.DINOV3.UPSAMPLER_WEIGHTS = "brixel", "best_upsampler.safetensors"

Set ``MODEL.PIXEL_MEAN/PIXEL_STD`` to ImageNet's RGB values in 0-255 and ``INPUT.FORMAT = "RGB"``
(:func:`add_dinov3_config` does), and ``MODEL.FPN.OUT_CHANNELS`` for the pyramid width.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..backbones.dinov3 import IMAGENET_MEAN, IMAGENET_STD
from .backbone import DINOv3Backbone
from .pyramid import UpsampledFeaturePyramid, ViTDetFeaturePyramid


def add_dinov3_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.DINOV3`` (defaults: ViT-S, no upsampler) and ViTDet's input conventions."""
    cfg.MODEL.DINOV3 = CfgNode()
    c = cfg.MODEL.DINOV3
    c.ARCH = "vits16"
    c.WEIGHTS = ""  # DINOv3 file; "" = random init (warned), drawn from INIT_SEED
    c.INIT_SEED = 0  # the random init's seed, recorded in checkpoints (ignored with WEIGHTS)
    c.UPSAMPLER = ""  # registered name (brixel, lift, jbu, featsharp, bilinear); "" = plain ViTDet
    c.UPSAMPLER_FACTOR = 0  # 0 = the method's default (or the file's)
    c.UPSAMPLER_WEIGHTS = ""  # export of tools/distill.py
    c.TRAIN_UPSAMPLER = False
    c.WORKING_SCALE = 1.0
    c.OUTPUT_STRIDE = 0  # the dense map's stride (e.g. 4 for p2 from any grid); 0 = the factor's
    c.SQUARE_PAD = 0
    cfg.MODEL.PIXEL_MEAN = [255.0 * m for m in IMAGENET_MEAN]
    cfg.MODEL.PIXEL_STD = [255.0 * s for s in IMAGENET_STD]
    cfg.INPUT.FORMAT = "RGB"
    return cfg


@BACKBONE_REGISTRY.register()
def build_dinov3_vitdet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """Frozen DINOv3 (+ upsampler) and a ViTDet pyramid p2..p6, from ``cfg.MODEL.DINOV3``."""
    c = cfg.MODEL.DINOV3
    upsampler = None
    if c.UPSAMPLER or c.UPSAMPLER_WEIGHTS:
        upsampler = {**({"type": c.UPSAMPLER} if c.UPSAMPLER else {}),
                     **({"factor": c.UPSAMPLER_FACTOR} if c.UPSAMPLER_FACTOR else {}),
                     **({"weights": c.UPSAMPLER_WEIGHTS} if c.UPSAMPLER_WEIGHTS else {})}
    net = DINOv3Backbone(arch=c.ARCH, weights=c.WEIGHTS or None, init_seed=c.INIT_SEED, upsampler=upsampler,
                         train_upsampler=c.TRAIN_UPSAMPLER, working_scale=c.WORKING_SCALE,
                         output_stride=c.OUTPUT_STRIDE or None)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if net.upsampler.method == "none" and net.working_scale == 1:
        return ViTDetFeaturePyramid(net, "last_feat", out_channels, scale_factors=(4.0, 2.0, 1.0, 0.5),
                                    top_block=LastLevelMaxPool(), norm="LN", square_pad=c.SQUARE_PAD)
    return UpsampledFeaturePyramid(net, out_channels, top_block=LastLevelMaxPool(), norm="LN",
                                   square_pad=c.SQUARE_PAD)
