"""Predictions on a user's pictures from a LazyConfig detector: the LazyConfig counterpart of
Detectron2's ``DefaultPredictor`` (which takes yacs configs only), and the COCO-format records
``COCOEvaluator`` writes.

    predictor = LazyPredictor(LazyConfig.load(config_file), "output/model_final.pth")
    predictor = LazyPredictor.from_export("mask_rcnn_brixel.safetensors")   # tools/export_model.py's file
    instances = predictor(load_rgb("photo.jpg"))    # Instances at the picture's size
    records = coco_records(instances, image_id=1, metadata=predictor.metadata)
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data import transforms as T
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances

from .checkpoint import FrozenBackboneCheckpointer


def dataset_metadata(cfg):
    """The ``MetadataCatalog`` entry of the config's test dataset (class names, dataset ids): a
    registered name (e.g. ``coco_2017_val``), or the LazyCall that registers it (the toy data)."""
    names = cfg.dataloader.test.dataset.names
    if not isinstance(names, str):
        names = instantiate(names)
    if isinstance(names, (list, tuple)):
        names = names[0]
    return MetadataCatalog.get(names)


class LazyPredictor:
    """``cfg.model`` with the weights of ``checkpoint`` (a checkpoint of tools/d2_train.py: the
    frozen DINOv3 and a frozen upsampler load from the files the config names), in eval mode,
    predicting one picture at a time as the config's test loader would feed it:

    - input: an RGB uint8 ``(H, W, 3)`` array (``load_rgb`` / PIL order), any size; converted to
      the model's ``input_format``;
    - resized by the config's test augmentations (``dataloader.test.mapper.augmentations``, e.g.
      ViTDet's longest side 1024), padded by the model to its ``size_divisibility``;
    - output: ``Instances`` at the picture's own size (boxes, scores, classes, masks).

    A picture the augmentations leave larger than the model's square padding
    (``model.backbone.square_pad``) is refused: the padding would crop it.
    """

    def __init__(self, cfg, checkpoint: str, device: Optional[str] = None):
        model = instantiate(cfg.model)
        FrozenBackboneCheckpointer(model).load(checkpoint)
        self._use(cfg, model, device, dataset_metadata(cfg))

    @classmethod
    def from_export(cls, path: str, device: str = "cpu") -> "LazyPredictor":
        """From one file of tools/export_model.py (DINOv3 found by its recorded name and hash).
        Its metadata holds the class names; category ids are then the model's (0-based)."""
        from ..export import load_exported_model

        model, cfg = load_exported_model(path, device)
        self = cls.__new__(cls)
        self._use(cfg, model, device, Metadata(name=str(path), thing_classes=list(cfg.metadata.thing_classes)))
        return self

    def _use(self, cfg, model: torch.nn.Module, device: Optional[str], metadata) -> None:
        self.cfg = cfg
        self.device = torch.device(device or cfg.train.device)
        self.model = model.to(self.device).eval()
        self.augmentations = T.AugmentationList(instantiate(list(cfg.dataloader.test.mapper.augmentations)))
        self.input_format = self.model.input_format
        self.metadata = metadata
        self.square = getattr(self.model.backbone, "padding_constraints", {}).get("square_size", 0)

    def __call__(self, image: np.ndarray) -> Instances:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"LazyPredictor takes an RGB uint8 (H, W, 3) picture, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        aug = T.AugInput(image)
        self.augmentations(aug)
        resized = aug.image
        if self.square and max(resized.shape[:2]) > self.square:
            raise ValueError(f"the config's test augmentations leave this {width}x{height} picture at "
                             f"{resized.shape[1]}x{resized.shape[0]}, larger than the model's square padding "
                             f"{self.square} (model.backbone.square_pad), which would crop it; resize it in "
                             f"dataloader.test.mapper.augmentations (e.g. ResizeShortestEdge max_size={self.square})")
        if self.input_format == "BGR":
            resized = resized[..., ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.model([{"image": tensor.to(self.device), "height": height, "width": width}])[0]["instances"]


def coco_records(instances: Instances, image_id: int, metadata=None) -> List[dict]:
    """Detections as COCO results records (``image_id``, ``category_id``, ``bbox`` as x, y, w, h,
    ``score``, ``segmentation`` as RLE), exactly as ``COCOEvaluator`` writes them: category ids
    mapped back to the dataset's ids when the metadata has the mapping."""
    records = instances_to_coco_json(instances.to("cpu"), image_id)
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) if metadata is not None else None
    if mapping:
        to_dataset = {v: k for k, v in mapping.items()}
        for r in records:
            r["category_id"] = to_dataset[r["category_id"]]
    return records
