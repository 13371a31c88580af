"""The toy segmentation dataset (the embedded default) as an MMSegmentation dataset, and the
check of label values against the model's classes that every config's runtime adds."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS, HOOKS

from ..engine import unwrap_model
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


@HOOKS.register_module()
class LabelRangeHook(Hook):
    """Stop at the first label map holding a class the model cannot predict, before the batch
    reaches the model (a CUDA kernel would fail with a device-side assert, the CPU with "Target 3
    is out of bounds", neither naming the file; at validation, mmseg's IoU would silently drop it).

    Every batch of training, validation and testing is checked on the CPU: labels must lie in
    ``0 .. num_classes - 1`` (``num_classes`` of every decode and auxiliary head; at validation
    and testing also the dataset's class count, which the metric scores) or be a head's
    ``ignore_index``. The message names the label map, the label and ``num_classes``. Works for
    any dataset (mmseg's stock ones included): it reads ``gt_sem_seg`` and ``seg_map_path`` of
    the packed samples. Sizes are checked when the label map is read (:class:`CheckLabelMap`).
    """

    priority = "VERY_HIGH"

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._check(runner, data_batch, None)

    def before_val_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._check(runner, data_batch, runner.val_dataloader.dataset)

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._check(runner, data_batch, runner.test_dataloader.dataset)

    @staticmethod
    def limits(model, dataset=None) -> Tuple[int, str, Tuple[int, ...]]:
        """(number of classes, where it comes from, ignore indices) for ``model`` (and ``dataset``)."""
        model = unwrap_model(model)
        aux = getattr(model, "auxiliary_head", None)
        heads = [model.decode_head] + (list(aux) if isinstance(aux, torch.nn.ModuleList) else [aux] if aux else [])
        n, source = min((h.num_classes, "the decode head's num_classes" if h is model.decode_head
                         else "an auxiliary head's num_classes") for h in heads)
        classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
        if classes is not None and len(classes) < n:
            n, source = len(classes), f"the dataset's class count ({type(dataset).__name__})"
        return n, source, tuple(sorted({int(h.ignore_index) for h in heads}))

    def _check(self, runner, data_batch, dataset: Optional[object]) -> None:
        samples = data_batch.get("data_samples", []) if isinstance(data_batch, dict) else []
        samples = [s for s in samples if "gt_sem_seg" in s]
        if not samples:
            return
        n, source, ignore = self.limits(runner.model, dataset)
        for sample in samples:
            labels = sample.gt_sem_seg.data
            outside = (labels < 0) | (labels >= n)
            for index in ignore:
                outside &= labels != index
            if outside.any():
                bad = torch.unique(labels[outside]).tolist()
                raise ValueError(
                    f"label map {sample.metainfo.get('seg_map_path')} holds label(s) {bad}, outside "
                    f"num_classes={n} ({source}: labels 0..{n - 1}, ignore index {', '.join(map(str, ignore))}); "
                    f"set num_classes to the dataset's classes, or map these labels to the ignore index")
