"""Predictions on a user's pictures from a LazyConfig detector: the LazyConfig counterpart of
Detectron2's ``DefaultPredictor`` (which takes yacs configs only), and the COCO-format records
``COCOEvaluator`` writes.

    predictor = LazyPredictor(LazyConfig.load(config_file), "output/model_final.pth")
    predictor = LazyPredictor.from_export("mask_rcnn_brixel.safetensors")   # tools/export_model.py's file
    instances = predictor("photo.jpg")              # a path, a PIL image or a BGR uint8 array
    records = coco_records(instances, image_id=1, metadata=predictor.metadata)
    detect_pictures(predictor, picture_paths(["photos/"]), "out")  # tools/d2_infer.py: COCO JSON + drawings
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances

from ..cli.pictures import PicturesFailedError
from ..common.filesystem import atomic_path, write_text_atomic
from ..images import load_rgb
from .checkpoint import FrozenBackboneCheckpointer

CHANNEL_ORDERS = ("BGR", "RGB")


def dataset_metadata(cfg):
    """The ``MetadataCatalog`` entry of the config's test dataset (class names, dataset ids): a
    registered name (e.g. ``coco_2017_val``), or the LazyCall that registers it (the toy data)."""
    names = cfg.dataloader.test.dataset.names
    if not isinstance(names, str):
        names = instantiate(names)
    if isinstance(names, (list, tuple)):
        names = names[0]
    return MetadataCatalog.get(names)


def coco_ids(metadata) -> Dict[str, Any]:
    """What COCO results need of a dataset, as plain data (an export records it): ``thing_classes``,
    ``category_ids`` (the dataset's category id of each contiguous class, detectron2's
    ``thing_dataset_id_to_contiguous_id`` inverted) and ``image_ids`` (``file_name`` -> ``id`` of
    the images of its COCO json, ``metadata.json_file``, when that file is here). Without a
    mapping in the metadata it is derived from the json's categories as ``load_coco_json`` does
    (sorted ids); without either, ids are the classes' indices."""
    classes = list(metadata.get("thing_classes", None) or [])
    mapping = dict(metadata.get("thing_dataset_id_to_contiguous_id", None) or {})
    images: Dict[str, int] = {}
    json_file = metadata.get("json_file", None)
    if json_file and os.path.isfile(json_file):
        with open(json_file) as f:
            coco = json.load(f)
        images = {str(im["file_name"]): int(im["id"]) for im in coco.get("images", [])}
        categories = sorted(coco.get("categories", []), key=lambda c: c["id"])
        if not mapping and categories:
            mapping = {int(c["id"]): i for i, c in enumerate(categories)}
            classes = classes or [c["name"] for c in categories]
    if not mapping:
        mapping = {i: i for i in range(len(classes))}
    category_ids = [int(d) for d, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    if sorted(mapping.values()) != list(range(len(category_ids))) or len(category_ids) != len(classes):
        raise ValueError(f"dataset {metadata.name}: thing_dataset_id_to_contiguous_id {mapping} does not map "
                         f"onto its {len(classes)} classes 0..{len(classes) - 1}")
    return {"thing_classes": classes, "category_ids": category_ids, "image_ids": images}


def coco_metadata(name: str, ids: Mapping[str, Any], base=None) -> Metadata:
    """A ``Metadata`` (``base``'s entries, e.g. a dataset's colours) with the classes and id map of ``ids``."""
    entries = dict(base.as_dict()) if base is not None else {}
    entries.update(name=name, thing_classes=list(ids["thing_classes"]),
                   thing_dataset_id_to_contiguous_id={int(d): i for i, d in enumerate(ids["category_ids"])})
    return Metadata(**entries)


def image_ids(paths: Sequence[str], known: Mapping[str, int]) -> List[int]:
    """COCO image ids for pictures, in order: a picture the dataset's COCO json lists (its
    ``file_name`` is the end of the picture's path, e.g. ``val2017/000000000139.jpg`` or just the
    file name) gets the json's id; every other picture (and a second one matching the same entry)
    gets the next id after the dataset's largest (1, 2, ... without a dataset)."""
    by_name = defaultdict(list)
    for file_name, i in known.items():
        parts = PurePosixPath(file_name.replace(os.sep, "/")).parts
        by_name[parts[-1]].append((parts, int(i)))
    taken, out = set(), []
    next_id = max(known.values(), default=0) + 1
    for path in paths:
        parts = Path(os.path.abspath(path)).parts
        found = [i for entry, i in by_name.get(parts[-1], []) if parts[-len(entry):] == entry]
        if len(found) == 1 and found[0] not in taken:
            out.append(found[0])
        else:
            out.append(next_id)
            next_id += 1
        taken.add(out[-1])
    return out


def _check_orders(pictures: str, model: str = "RGB") -> None:
    if pictures not in CHANNEL_ORDERS or model not in CHANNEL_ORDERS:
        raise ValueError(f"LazyPredictor converts between {'/'.join(CHANNEL_ORDERS)}: got input_format="
                         f"{pictures!r} for the pictures, {model!r} for the model")


class LazyPredictor:
    """``cfg.model`` with the weights of ``checkpoint`` (a checkpoint of tools/d2_train.py: the
    frozen DINOv3 and a frozen upsampler load from the files the config names), in eval mode,
    predicting one picture at a time as the config's test loader would feed it:

    - input, as ``DefaultPredictor`` takes it: a uint8 ``(H, W, 3)`` array in the channel order
      ``input_format`` (``"BGR"`` by default, as ``cv2.imread`` and ``DefaultPredictor``; pass
      ``input_format="RGB"`` for arrays of PIL / ``load_rgb``), or a PIL image, or a picture's path
      (both read as RGB); any size; converted to the model's ``input_format``;
    - resized by the config's test augmentations (``dataloader.test.mapper.augmentations``, e.g.
      ViTDet's longest side 1024), padded by the model to its ``size_divisibility``;
    - output: ``Instances`` at the picture's own size (boxes, scores, classes, masks).

    A picture the augmentations leave larger than the model's square padding
    (``model.backbone.square_pad``) is refused: the padding would crop it.

    ``metadata``: class names and the dataset's category ids (``coco_records``); ``image_ids``: the
    dataset's image ids by file name (:func:`image_ids`), both from the config's test dataset or
    recorded in the export.
    """

    def __init__(self, cfg, checkpoint: str, device: Optional[str] = None, input_format: str = "BGR"):
        _check_orders(input_format)
        model = instantiate(cfg.model)
        FrozenBackboneCheckpointer(model).load(checkpoint)
        metadata = dataset_metadata(cfg)
        self._use(cfg, model, device, metadata, coco_ids(metadata), input_format)

    @classmethod
    def from_config_file(cls, config_file: str, checkpoint: str, opts: Sequence[str] = (), device: Optional[str] = None,
                         input_format: str = "BGR") -> "LazyPredictor":
        """From a LazyConfig file with ``key=value`` overrides (as tools/d2_train.py takes them); weight
        files are found beside the config too, as in training."""
        from detectron2.config import LazyConfig

        from ..files.lookup import config_folder

        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        with config_folder(config_file):
            return cls(cfg, checkpoint, device=device, input_format=input_format)

    @classmethod
    def from_export(cls, path: str, device: str = "cpu", input_format: str = "BGR") -> "LazyPredictor":
        """From one file of tools/export_model.py (DINOv3 found by its recorded name and hash), with
        the class names, category ids and image ids of the dataset it was exported with."""
        from omegaconf import OmegaConf

        from ..files.export import load_exported_model

        _check_orders(input_format)
        model, cfg = load_exported_model(path, device)
        self = cls.__new__(cls)
        self._use(cfg, model, device, None, OmegaConf.to_container(cfg.metadata), input_format, str(path))
        return self

    def _use(self, cfg, model: torch.nn.Module, device: Optional[str], metadata, ids: Dict[str, Any],
             input_format: str, name: Optional[str] = None) -> None:
        _check_orders(input_format, model.input_format)
        self.cfg = cfg
        self.device = torch.device(device or cfg.train.device)
        self.model = model.to(self.device).eval()
        self.augmentations = T.AugmentationList(instantiate(list(cfg.dataloader.test.mapper.augmentations)))
        self.input_format = input_format  # of the arrays passed in; the model's is model.input_format
        self.metadata = coco_metadata(name or metadata.name, ids, metadata)
        self.image_ids = dict(ids["image_ids"])
        self.square = getattr(self.model.backbone, "padding_constraints", {}).get("square_size", 0)

    def _as_model_array(self, image) -> np.ndarray:
        """The picture as a uint8 (H, W, 3) array in the model's channel order."""
        from PIL import Image

        order = self.input_format
        if isinstance(image, (str, os.PathLike)):
            from ..images import load_rgb

            image = load_rgb(str(image))
        if isinstance(image, Image.Image):
            image, order = np.asarray(image.convert("RGB")), "RGB"
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            what = f"{image.dtype} array {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"LazyPredictor takes a uint8 (H, W, 3) {self.input_format} array, a PIL image or a "
                             f"picture's path, got a {what}")
        return image[..., ::-1] if order != self.model.input_format else image

    def __call__(self, image) -> Instances:
        """``Instances`` of ``image``: a uint8 (H, W, 3) array in ``input_format``, a PIL image or a path."""
        image = self._as_model_array(image)
        height, width = image.shape[:2]
        aug = T.AugInput(image)
        self.augmentations(aug)
        resized = aug.image
        if self.square and max(resized.shape[:2]) > self.square:
            raise ValueError(f"the config's test augmentations leave this {width}x{height} picture at "
                             f"{resized.shape[1]}x{resized.shape[0]}, larger than the model's square padding "
                             f"{self.square} (model.backbone.square_pad), which would crop it; resize it in "
                             f"dataloader.test.mapper.augmentations (e.g. ResizeShortestEdge max_size={self.square})")
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


def coco_categories(metadata) -> List[dict]:
    """COCO ``categories`` (the dataset's id and the class name) of ``metadata``, in id order."""
    classes = list(metadata.thing_classes)
    return [{"id": dataset_id, "name": classes[i]}
            for dataset_id, i in sorted(metadata.thing_dataset_id_to_contiguous_id.items())]


def detect_pictures(predictor: LazyPredictor, pictures: Sequence[Tuple[str, str]], out_dir: str,
                    threshold: float = 0.5) -> None:
    """tools/d2_infer.py: detections of each ``(path, name)`` of
    :func:`brixel_plugins.cli.pictures.picture_paths`, written (each file atomically) as
    ``out_dir/coco_instances_results.json`` (:func:`coco_records`, image ids of :func:`image_ids`),
    ``out_dir/images.json`` (COCO ``images`` and ``categories``) and ``out_dir/pictures/<name>.png``
    (detections scoring >= ``threshold``, drawn by detectron2's Visualizer). A picture that cannot be
    read or predicted is reported and skipped; after the others, the JSON holds the pictures done and
    :class:`~brixel_plugins.cli.pictures.PicturesFailedError` lists the failures."""
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    meta = predictor.metadata
    ids = image_ids([path for path, _ in pictures], predictor.image_ids)
    results, images, failed = [], [], []
    for i, ((path, name), image_id) in enumerate(zip(pictures, ids), 1):
        try:
            picture = load_rgb(path)
            instances = predictor(picture)
        except (OSError, ValueError) as e:  # not an image, empty, truncated; larger than the padding
            failed.append(f"{path}: {e}")
            print(f"[{i}/{len(pictures)}] {path}: failed ({e})", flush=True)
            continue
        image = np.asarray(picture)
        results += coco_records(instances, image_id, meta)
        images.append({"id": image_id, "file_name": path, "width": image.shape[1], "height": image.shape[0]})
        shown = instances[instances.scores >= threshold].to("cpu")
        drawing = Visualizer(image, meta).draw_instance_predictions(shown).get_image()
        with atomic_path(os.path.join(out_dir, "pictures", f"{name}.png")) as tmp:
            Image.fromarray(drawing).save(tmp, format="PNG")
        print(f"[{i}/{len(pictures)}] {path}: {len(instances)} detections, {len(shown)} drawn "
              f"(score >= {threshold})", flush=True)
    write_text_atomic(os.path.join(out_dir, "coco_instances_results.json"), json.dumps(results))
    write_text_atomic(os.path.join(out_dir, "images.json"),
                      json.dumps({"images": images, "categories": coco_categories(meta)}, indent=1))
    print(f"detections: {os.path.join(out_dir, 'coco_instances_results.json')} (images: images.json)\n"
          f"pictures:   {os.path.join(out_dir, 'pictures')}")
    if failed:
        print(f"{len(failed)} of {len(pictures)} pictures failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        raise PicturesFailedError(f"{len(failed)} of {len(pictures)} pictures could not be read or predicted "
                                  f"(listed above); the JSON holds the {len(pictures) - len(failed)} done")
