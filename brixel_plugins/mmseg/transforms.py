"""Data transforms MMSegmentation does not ship: the BRIXEL protocol's scoring size, and the
label-map check at read time."""
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


@TRANSFORMS.register_module()
class CheckLabelMap(BaseTransform):
    """Refuse a label map whose size is not its image's, naming both files and both sizes.

    Put it right after ``LoadAnnotations``: it compares the label map as read with the image
    file's size (``ori_shape``), which holds also where the pipeline resized the image first
    (mmseg's stock test pipelines). Without it a mismatch surfaces later and nameless: a crop
    of the wrong region, "stack expects each tensor to be equal size" in the collate, or an
    IoU on maps of different sizes. The label values are checked against the model's classes
    by :class:`~brixel_plugins.mmseg.datasets.LabelRangeHook`, which knows the model.
    """

    def transform(self, results: dict) -> dict:
        if "gt_seg_map" not in results and "seg_map_path" not in results:
            return results  # a picture without labels: MMSegInferencer drops LoadAnnotations only
        if "gt_seg_map" not in results:
            raise KeyError("CheckLabelMap checks the label map LoadAnnotations reads: put it after LoadAnnotations")
        label_hw = tuple(results["gt_seg_map"].shape[:2])
        image_hw = tuple(results["ori_shape"][:2])
        if label_hw != image_hw:
            raise ValueError(f"label map {results.get('seg_map_path')} is {label_hw[0]}x{label_hw[1]} (HxW), but "
                             f"its image {results.get('img_path')} is {image_hw[0]}x{image_hw[1]}; every label map "
                             f"must have its image's size")
        return results
