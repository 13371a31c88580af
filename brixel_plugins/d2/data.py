"""The toy COCO-format instance dataset (brixel_plugins.toydata.instances) in Detectron2's catalogs."""
from __future__ import annotations

import hashlib
import os
from typing import Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..toydata.instances import CATEGORIES, split_files, write_toy_instances


def toy_instances(split: str, root: str = "work_dirs/toydata/instances", num_train: int = 64, num_val: int = 16,
                  size: Union[int, Tuple[int, int]] = 128, seed: int = 0) -> str:
    """Write the toy dataset under ``root`` if it is not there yet, register ``split`` as a COCO
    instances dataset and return its name (use it wherever a config wants a dataset name: the
    train/test loaders and ``COCOEvaluator``). Idempotent; the name encodes ``root``."""
    root = os.path.abspath(root)
    write_toy_instances(root, num_train, num_val, size, seed)
    name = f"toy_instances_{split}_{hashlib.sha1(root.encode()).hexdigest()[:8]}"
    if name not in DatasetCatalog.list():
        json_file, image_root = split_files(root, split)
        register_coco_instances(name, {}, str(json_file), str(image_root))
        # what load_coco_json sets on first load, known up front for evaluators built before it
        MetadataCatalog.get(name).set(thing_classes=list(CATEGORIES),
                                      thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(CATEGORIES))})
    return name
