"""The toy segmentation dataset (the embedded default) as an MMSegmentation dataset."""
from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..toydata.segmentation import CLASSES, PALETTE, write_toy_segmentation


@DATASETS.register_module()
class ToyShapesDataset(BaseSegDataset):
    """Photo crops with small, thin textured shapes (:mod:`brixel_plugins.toydata.segmentation`):
    ``img_dir/{train,val}/*.png`` and ``ann_dir/{train,val}/*.png`` (class ids, 0 = background).

    Args:
        generate: write the dataset into ``data_root`` first if it is not there (a dict of
            :func:`write_toy_segmentation` arguments, e.g. ``dict(num_train=64, size=128)``), so a
            toy config runs on a fresh machine. None reads what is there.
    """

    METAINFO = dict(classes=CLASSES, palette=[list(c) for c in PALETTE])

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png", generate=None, **kwargs):
        if generate is not None:
            if not kwargs.get("data_root"):
                raise ValueError("ToyShapesDataset(generate=...) needs data_root: where to write the dataset")
            write_toy_segmentation(kwargs["data_root"], **generate)
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=False, **kwargs)
