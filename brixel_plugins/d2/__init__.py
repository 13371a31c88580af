"""Detectron2 adapter: frozen DINOv3 + any upsampler as a ViTDet backbone (the only module that
imports detectron2).

- :class:`DINOv3Backbone`: the frozen ViT (+ upsampler) as a ``Backbone`` giving ``"last_feat"``
  (stride 16) and ``"dense"`` (stride 16 / factor).
- :class:`UpsampledFeaturePyramid`: ViTDet's pyramid p2..p6 (strides 4..64) over both maps;
  :class:`ViTDetFeaturePyramid`: detectron2's own, for plain ViTDet without an upsampler.
- :class:`FrozenBackboneCheckpointer`: checkpoints without the frozen parts, atomic, resumable.
- :func:`toy_instances`: the toy COCO-format dataset, registered by name.
- yacs users: :func:`add_dinov3_config` and ``MODEL.BACKBONE.NAME = "build_dinov3_vitdet_backbone"``.
"""
from . import export  # noqa: F401  registers the builder of detectron2 model files (files.export.load_exported_model)
from .backbone import DINOv3Backbone
from .checkpoint import FrozenBackboneCheckpointer
from .data import toy_instances
from .pyramid import UpsampledFeaturePyramid, ViTDetFeaturePyramid
from .yacs_config import add_dinov3_config, build_dinov3_vitdet_backbone

__all__ = ["DINOv3Backbone", "FrozenBackboneCheckpointer", "UpsampledFeaturePyramid", "ViTDetFeaturePyramid",
           "add_dinov3_config", "build_dinov3_vitdet_backbone", "toy_instances"]
