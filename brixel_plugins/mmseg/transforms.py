"""A data transform the BRIXEL protocol needs and MMSegmentation does not ship."""
from __future__ import annotations

from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class ResetOriShape(BaseTransform):
    """Make the current (resized, cropped) image the one predictions are scored at.

    MMSegmentation resizes predictions back to ``ori_shape`` (the file's size) and compares them
    with the label map. The BRIXEL protocol scores the short-side-256 centre crop instead: load the
    labels before resizing (they are resized and cropped with the image), then put this transform
    last, so ``ori_shape`` is the crop's size.
    """

    def transform(self, results: dict) -> dict:
        results["ori_shape"] = results["img"].shape[:2]
        return results
