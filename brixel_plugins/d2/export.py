"""Detectron2 models to and from the self-contained files of :mod:`brixel_plugins.export`.

The LazyConfig's ``model`` is stored as plain data with each ``_target_`` as a name; rebuilding
instantiates only classes of detectron2, brixel_plugins and ``torch.nn`` (a file cannot name a
function to call)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple, Union

import torch

from ..backbones.weights import WeightFileError
from ..checkpoints import checked_elsewhere
from ..export import check_loaded, dinov3_reference, find_dinov3, write_model_file
from ..weight_files import config_folder
from .backbone import DINOv3Backbone
from .checkpoint import FrozenBackboneCheckpointer

PathLike = Union[str, Path]
ALLOWED_TARGETS = ("detectron2.", "brixel_plugins.", "torch.nn.")


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


def _check_targets(node: Any, path: PathLike) -> None:
    from hydra.utils import get_class  # detectron2's instantiate resolves names the same way

    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            if not (isinstance(target, str) and target.startswith(ALLOWED_TARGETS)):
                raise WeightFileError(f"{path}: the model config names {target!r}; only classes of "
                                      f"{', '.join(ALLOWED_TARGETS)} are built from a model file")
            try:
                get_class(target)
            except Exception as e:
                raise WeightFileError(f"{path}: the model config names {target!r}, which is not a class "
                                      f"({type(e).__name__}: {e})") from e
        for v in node.values():
            _check_targets(v, path)
    elif isinstance(node, list):
        for v in node:
            _check_targets(v, path)


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
    node.update(weights=dinov3["weights"], upsampler={"type": up.method, **json.loads(json.dumps(up.config))},
                upsampler_weights=None, train_upsampler=False)
    try:
        from .predictor import dataset_metadata

        classes = list(dataset_metadata(cfg).get("thing_classes", []))
    except Exception:  # a dataset that is not registered here: no class names
        classes = []
    test = {"mapper": {"augmentations": _plain(cfg.dataloader.test.mapper.augmentations)}} \
        if "dataloader" in cfg and "test" in cfg.dataloader else {}
    return write_model_file(out, tensors, {
        "framework": "detectron2", "config": {"model": model_cfg, "dataloader": {"test": test}},
        "dinov3": dinov3, "record": record, "thing_classes": classes,
        "source": {"config": str(config), "checkpoint": str(checkpoint), "opts": list(opts)}})


def build_exported(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: PathLike, device="cpu"):
    """``(model, cfg)`` of an export: the detector in eval mode, and a LazyConfig with its ``model``,
    ``dataloader.test.mapper.augmentations``, ``train.device`` and ``metadata.thing_classes``."""
    from detectron2.config import instantiate
    from omegaconf import OmegaConf

    config = meta["config"]
    _check_targets(config, path)
    dinov3 = find_dinov3(meta)
    cfg = OmegaConf.create({**config, "train": {"device": str(device)},
                            "metadata": {"thing_classes": meta.get("thing_classes", [])}})
    node = cfg
    for part in meta["dinov3"]["key"].split(".")[:-1]:
        node = node[part]
    node.weights = dinov3
    with warnings.catch_warnings():  # the upsampler is built untrained, then gets the file's weights
        warnings.filterwarnings("ignore", message=r".*has no fitted statistics.*")
        model = instantiate(cfg.model)
    frozen = _net(model)[0] + ".featurizer.backbone."
    with checked_elsewhere():  # an export has no training record in its tensors: check_loaded is its check
        check_loaded(model.load_state_dict(tensors, strict=False), path,
                     allowed_missing=[k for k in model.state_dict() if k.startswith(frozen)])
    return model.to(device).eval(), cfg
