from .dinov3 import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PATCH_SIZE,
    BackboneSpec,
    FrozenDINOv3,
    arch_info,
    check_image_size,
)
from .weights import WeightFileError, meta_to_timm, read_state_dict, timm_to_meta

__all__ = ["ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "PATCH_SIZE", "BackboneSpec", "FrozenDINOv3",
           "arch_info", "check_image_size", "WeightFileError", "meta_to_timm", "read_state_dict",
           "timm_to_meta"]
