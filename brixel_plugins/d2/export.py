"""Detectron2 models to and from the self-contained files of :mod:`brixel_plugins.files.export`.

The LazyConfig's ``model`` and test augmentations are stored as plain data with each ``_target_``
as a name. Before anything is built, :func:`check_config` refuses a ``_target_`` that is not on
:data:`ALLOWED_TARGETS`, an exact list of the classes the configs of ``configs/d2`` build (compared
as whole strings), and any ``${...}`` interpolation: a file cannot name anything else to import or
call. The dataset's class names, category ids and image ids are recorded for COCO results."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple, Union

import torch

from ..backbones.weights import WeightFileError
from ..files.checkpoints import checked_elsewhere
from ..files.export import (
    check_loaded,
    check_same_dinov3,
    dinov3_reference,
    find_dinov3,
    register_model_format,
    write_model_file,
)
from ..files.lookup import config_folder
from .backbone import DINOv3Backbone
from .checkpoint import FrozenBackboneCheckpointer

PathLike = Union[str, Path]
# every class the configs of configs/d2 build for inference (the model, the test augmentations);
# tests/test_export_trust.py keeps this list and the configs in step. Whole names, never prefixes.
ALLOWED_TARGETS = frozenset({
    "brixel_plugins.d2.backbone.DINOv3Backbone",
    "brixel_plugins.d2.pyramid.UpsampledFeaturePyramid",
    "brixel_plugins.d2.pyramid.ViTDetFeaturePyramid",
    "detectron2.data.transforms.augmentation_impl.ResizeShortestEdge",
    "detectron2.modeling.anchor_generator.DefaultAnchorGenerator",
    "detectron2.modeling.backbone.fpn.LastLevelMaxPool",
    "detectron2.modeling.box_regression.Box2BoxTransform",
    "detectron2.modeling.matcher.Matcher",
    "detectron2.modeling.meta_arch.rcnn.GeneralizedRCNN",
    "detectron2.modeling.poolers.ROIPooler",
    "detectron2.modeling.proposal_generator.rpn.RPN",
    "detectron2.modeling.proposal_generator.rpn.StandardRPNHead",
    "detectron2.modeling.roi_heads.box_head.FastRCNNConvFCHead",
    "detectron2.modeling.roi_heads.cascade_rcnn.CascadeROIHeads",
    "detectron2.modeling.roi_heads.fast_rcnn.FastRCNNOutputLayers",
    "detectron2.modeling.roi_heads.mask_head.MaskRCNNConvUpsampleHead",
    "detectron2.modeling.roi_heads.roi_heads.StandardROIHeads",
})


def _plain(node: Any) -> Any:
    """A LazyConfig node as JSON-able data, callables of ``_target_`` as their import names."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out[k] = f"{v.__module__}.{v.__qualname__}" if k == "_target_" and callable(v) else _plain(v)
        return out
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def check_config(config: Any, path: PathLike) -> None:
    """Refuse, before anything is built, an exported config naming a ``_target_`` off
    :data:`ALLOWED_TARGETS` or holding an interpolation; the message names the key and the value."""
    def refuse(where: str, what: str) -> None:
        raise WeightFileError(f"{path}: refusing to build it: {where} = {what}. A model file builds only the "
                              f"detectron2 and brixel_plugins classes the configs of configs/d2 use, "
                              f"named exactly; nothing else is imported or called. Export the model again from "
                              f"its config and checkpoint (python tools/export_model.py CONFIG CHECKPOINT OUT)")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node and node["_target_"] not in ALLOWED_TARGETS:
                refuse(f"{where}._target_", f"{node['_target_']!r}, which is not on the list of classes")
            for k, v in node.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str) and "${" in node:  # OmegaConf would resolve it: an export holds values
            refuse(where, f"{node!r} (an interpolation)")

    if not isinstance(config, dict) or set(config) != {"model", "dataloader"}:
        refuse("config", f"keys {sorted(config) if isinstance(config, dict) else type(config).__name__} "
                         f"(an export holds model and dataloader)")
    walk(config, "")


def _net(model: torch.nn.Module) -> Tuple[str, DINOv3Backbone]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, DINOv3Backbone)]
    if len(found) != 1:
        raise ValueError(f"expected one DINOv3Backbone in the detector, found {len(found)}")
    return found[0]


def load_trained(config: PathLike, checkpoint: PathLike, opts: Sequence[str] = (), device="cpu"):
    """The detector of a LazyConfig file (with ``key=value`` overrides) and the weights of
    ``checkpoint``, checked like every load here. ``(model, cfg)``."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(config)), list(opts))
    with config_folder(config):
        model = instantiate(cfg.model)
    FrozenBackboneCheckpointer(model).load(str(checkpoint))
    return model.to(device).eval(), cfg


def export_checkpoint(config: PathLike, checkpoint: PathLike, out: PathLike, opts: Sequence[str] = ()) -> Path:
    """Write the detector of ``config`` + ``checkpoint`` as one file (DINOv3 by reference)."""
    model, cfg = load_trained(config, checkpoint, opts)
    name, net = _net(model)
    prefix = f"{name}." if name else ""
    record = net.training_record()
    up = net.upsampler.for_export()
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    tensors.update({f"{prefix}featurizer.upsampler.{k}": v for k, v in up.state_dict().items()})
    model_cfg = _plain(cfg.model)
    node = model_cfg
    for part in name.split(".") if name else ():
        node = node[part]
    dinov3 = dinov3_reference(record, f"model.{name}.weights" if name else "model.weights")
    node.pop("upsampler_weights", None)  # no longer a key: the upsampler's tensors are in the file
    node.update(weights=dinov3["weights"], upsampler={"type": up.method, **json.loads(json.dumps(up.config))},
                train_upsampler=False)
    from .predictor import coco_ids, dataset_metadata

    coco = coco_ids(dataset_metadata(cfg))  # COCO results in the dataset's ids, as with the checkpoint
    test = {"mapper": {"augmentations": _plain(cfg.dataloader.test.mapper.augmentations)}} \
        if "dataloader" in cfg and "test" in cfg.dataloader else {}
    return write_model_file(out, tensors, {
        "framework": "detectron2", "config": {"model": model_cfg, "dataloader": {"test": test}},
        "dinov3": dinov3, "record": record, "coco": coco,
        "source": {"config": str(config), "checkpoint": str(checkpoint), "opts": list(opts)}})


def build_exported(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: PathLike, device="cpu"):
    """``(model, cfg)`` of an export: the detector in eval mode, and a LazyConfig with its ``model``,
    ``dataloader.test.mapper.augmentations``, ``train.device`` and ``metadata`` (``thing_classes``,
    the dataset's ``category_ids`` and ``image_ids``: :func:`brixel_plugins.d2.predictor.coco_ids`)."""
    from detectron2.config import instantiate
    from omegaconf import OmegaConf

    config = meta["config"]
    check_config(config, path)  # before anything is built or looked up
    coco = _checked_coco(meta.get("coco"), path)
    node = config
    for part in str(meta["dinov3"]["key"]).split(".")[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or node.get("_target_") != f"{DINOv3Backbone.__module__}.DINOv3Backbone":
        raise WeightFileError(f"{path}: its DINOv3 key {meta['dinov3']['key']!r} does not name the DINOv3Backbone "
                              f"of its config; the file is damaged")
    node["weights"] = find_dinov3(meta, Path(path).parent)
    cfg = OmegaConf.create({**config, "train": {"device": str(device)}, "metadata": coco})
    with warnings.catch_warnings():  # the upsampler is built untrained, then gets the file's weights
        warnings.filterwarnings("ignore", message=r".*has no fitted statistics.*")
        model = instantiate(cfg.model)
    check_same_dinov3(meta, _net(model)[1].training_record(), path)
    frozen = _net(model)[0] + ".featurizer.backbone."
    with checked_elsewhere():  # an export has no training record in its tensors: check_loaded is its check
        check_loaded(model.load_state_dict(tensors, strict=False), path,
                     allowed_missing=[k for k in model.state_dict() if k.startswith(frozen)])
    return model.to(device).eval(), cfg


def _checked_coco(coco: Any, path: PathLike) -> Dict[str, Any]:
    """The recorded class names, category ids and image ids, refused unless they are of the right types."""
    ok = (isinstance(coco, dict) and isinstance(coco.get("thing_classes"), list)
          and isinstance(coco.get("category_ids"), list) and isinstance(coco.get("image_ids"), dict)
          and all(isinstance(c, str) for c in coco["thing_classes"])
          and all(isinstance(i, int) for i in coco["category_ids"])
          and len(coco["category_ids"]) == len(coco["thing_classes"])
          and all(isinstance(i, int) for i in coco["image_ids"].values()))
    if not ok:
        raise WeightFileError(f"{path}: its dataset record (class names, category and image ids) is missing or "
                              f"damaged; export it again (python tools/export_model.py CONFIG CHECKPOINT OUT)")
    return coco


register_model_format("detectron2", build_exported)  # load_exported_model rebuilds the files this module writes
