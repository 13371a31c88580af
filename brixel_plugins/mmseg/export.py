"""MMSegmentation models to and from the self-contained files of :mod:`brixel_plugins.files.export`.

The config is stored as plain data and checked before anything is built (:func:`check_config`):
every ``type`` must be a plain name (no dotted path) registered in the registries of the ``mmseg``
scope (MMSegmentation's, MMCV's and mmengine's, and what brixel_plugins registers there): ``MODELS``
for the model, ``TRANSFORMS`` for the pipelines, the upsampler registry for the backbone's
upsampler. mmengine would otherwise import any dotted name it is given."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ..backbones.weights import WeightFileError
from ..files.checkpoints import checked_elsewhere, load_checkpoint_file, refuse_or_warn, state_dict_problems
from ..files.export import (
    check_loaded,
    check_same_dinov3,
    dinov3_reference,
    find_dinov3,
    register_model_format,
    write_model_file,
)
from ..files.lookup import config_folder

PathLike = Union[str, Path]
# what inference needs of a config: the model, its scope and the pipelines inference_model runs
INFERENCE_KEYS = ("default_scope", "model", "test_pipeline", "tta_model", "tta_pipeline")
SCOPE = "mmseg"
UPSAMPLER_PATH = "model.backbone.upsampler"  # the one node built by brixel_plugins' upsampler registry


def load_trained(config: PathLike, checkpoint: PathLike, device: Union[str, torch.device] = "cpu"):
    """The segmentor of ``config`` with the weights of ``checkpoint`` (of tools/train.py or mmseg's
    train.py), checked like every load here (training record, shapes, keys). ``(model, cfg, checkpoint)``."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from . import DINOv3Featurizer  # noqa: F401  registers our components

    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.get("default_scope", "mmseg"))
    with config_folder(config):
        model = MODELS.build(cfg.model)
    ckpt = load_checkpoint_file(str(checkpoint))
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.get("state_dict", ckpt).items()}
    refuse_or_warn(state_dict_problems(model.state_dict(), state), f"checkpoint {checkpoint} does not fit {config}")
    model.load_state_dict(state, strict=False)  # what is missing was refused above, or asked for
    return model.to(device).eval(), cfg, ckpt


def export_checkpoint(config: PathLike, checkpoint: PathLike, out: PathLike) -> Path:
    """Write the model of ``config`` + ``checkpoint`` as one file (DINOv3 by reference)."""
    model, cfg, ckpt = load_trained(config, checkpoint)
    featurizer = model.backbone
    record = featurizer.training_record()
    up = featurizer.upsampler.for_export()  # e.g. spectral reparametrisation baked into plain weights
    tensors = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    tensors.update({f"backbone.featurizer.upsampler.{k}": v for k, v in up.state_dict().items()})
    inference = {k: cfg[k] for k in INFERENCE_KEYS if k in cfg}
    inference = json.loads(json.dumps(_plain_config(inference)))
    dinov3 = dinov3_reference(record, "model.backbone.weights")
    inference["model"]["backbone"].update(weights=dinov3["weights"], train_upsampler=False,
                                          upsampler={"type": up.method, **json.loads(json.dumps(up.config))})
    dataset_meta = (ckpt.get("meta") or {}).get("dataset_meta") or getattr(model, "dataset_meta", None)
    return write_model_file(out, tensors, {
        "framework": "mmseg", "config": inference, "dinov3": dinov3, "record": record,
        "dataset_meta": json.loads(json.dumps(dataset_meta)) if dataset_meta else None,
        "source": {"config": str(config), "checkpoint": str(checkpoint)}})


def _plain_config(obj: Any) -> Any:
    """mmengine ConfigDicts as plain dicts and lists (JSON-able)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {k: _plain_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_config(v) for v in obj]
    return obj


def _registered(registry) -> set:
    """The names ``registry.build`` finds without importing anything: its own and its ancestors'."""
    registry.import_from_location()  # the framework's own modules register their classes
    names = set()
    while registry is not None:
        names.update(registry.module_dict)
        registry = registry.parent
    return names


def check_config(config: Any, path: PathLike) -> None:
    """Refuse, before anything is built, an exported config that names anything but a class the
    ``mmseg`` scope registers (see the module docstring); the message names the key and value."""
    from mmseg.registry import MODELS, TRANSFORMS

    from ..upsamplers import UPSAMPLERS
    from . import DINOv3Featurizer  # noqa: F401  registers our components

    def refuse(where: str, what: str) -> None:
        raise WeightFileError(f"{path}: refusing to build it: {where} = {what}. A model file builds only the "
                              f"classes MMSegmentation, MMCV, mmengine and brixel_plugins register by plain "
                              f"name; nothing is imported or called by path. Export the model again from its "
                              f"config and checkpoint (python tools/export_model.py CONFIG CHECKPOINT OUT)")

    if not isinstance(config, dict):
        refuse("config", f"a {type(config).__name__}, not a dict")
    for key in config:
        if key not in INFERENCE_KEYS:
            refuse(key, f"{json.dumps(config[key])[:200]} (an export holds only {', '.join(INFERENCE_KEYS)})")
    if config.get("default_scope", SCOPE) != SCOPE:
        refuse("default_scope", repr(config["default_scope"]))
    models, transforms = _registered(MODELS), _registered(TRANSFORMS)

    def walk(node: Any, where: str, names: set, registry: str) -> None:
        if isinstance(node, dict):
            if node.get("_scope_", SCOPE) != SCOPE:  # another scope's registries (and imports)
                refuse(f"{where}._scope_", repr(node["_scope_"]))
            if "type" in node:
                kind, known = ("upsampler", set(UPSAMPLERS)) if where == UPSAMPLER_PATH else (registry, names)
                value = node["type"]
                if not isinstance(value, str) or value not in known:
                    refuse(f"{where}.type", f"{value!r}, which is not a name in the {kind} registry")
            for k, v in node.items():
                walk(v, f"{where}.{k}", names, registry)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]", names, registry)

    for key in ("model", "tta_model"):
        walk(config.get(key), key, models, "MODELS")
    for key in ("test_pipeline", "tta_pipeline"):
        walk(config.get(key), key, transforms, "TRANSFORMS")


def build_exported(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: PathLike,
                   device: Union[str, torch.device] = "cpu"):
    """The segmentor of an export, as ``mmseg.apis.init_model`` returns one (``cfg``, ``dataset_meta``)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    check_config(meta["config"], path)  # before anything is built or looked up
    cfg = Config(meta["config"])  # plain data, never executed
    cfg.model.backbone.weights = find_dinov3(meta, Path(path).parent)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    with warnings.catch_warnings():  # the upsampler is built untrained, then gets the file's weights
        warnings.filterwarnings("ignore", message=r".*has no fitted statistics.*")
        model = MODELS.build(cfg.model)
    check_same_dinov3(meta, model.backbone.training_record(), path)
    with checked_elsewhere():  # an export has no training record in its tensors: check_loaded is its check
        check_loaded(model.load_state_dict(tensors, strict=False), path)
    model.cfg = cfg
    model.dataset_meta = meta.get("dataset_meta") or {}
    return model.to(device).eval()


register_model_format("mmseg", build_exported)  # load_exported_model rebuilds the files this module writes
