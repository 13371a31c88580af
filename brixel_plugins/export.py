"""One self-contained model file for inference on another machine (``tools/export_model.py``).

A safetensors file: the tensors of everything that is not DINOv3 (the head, the neck, the trained
or frozen upsampler), and, as JSON in the header, the model's config (plain data: a dict, never
code), the class names and palette, and DINOv3 *by reference*: its file name, the config key that
sets it and its sha256. Loading finds DINOv3 by the lookup rule of
:mod:`brixel_plugins.weight_files` (the recorded path, ``$BRIXEL_WEIGHTS_DIR``, the cwd) and
refuses a file with other bytes.

    model = load_exported_model("brixel_vits16_ade20k.safetensors")   # mmseg: like init_model
    model, cfg = load_exported_model("mask_rcnn_brixel.safetensors")  # detectron2: model + its LazyConfig

Framework-neutral: the adapters (:mod:`brixel_plugins.mmseg.export`, :mod:`brixel_plugins.d2.export`)
write and rebuild their models; this module owns the file format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .backbones.weights import WeightFileError
from .checks import first_non_finite
from .io import read_safetensors
from .utils import atomic_path
from .version import __version__
from .weight_files import find_weight_file

FORMAT = "brixel_plugins.model/1"
PathLike = Union[str, Path]


def write_model_file(out: PathLike, tensors: Mapping[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-able: framework, config, dinov3, dataset_meta, record)."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    bad = first_non_finite(tensors.items())
    if bad:
        raise ValueError(f"refusing to write {out}: {bad[0]} holds {bad[1]} NaN/Inf values of {bad[2]}")
    header = {"format": FORMAT, "package_version": __version__, **meta}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "model": json.dumps(header, sort_keys=True)})
    return out


def read_model_file(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    path = Path(path)
    tensors, raw = read_safetensors(path, "model file", "a model file of tools/export_model.py")
    if raw.get("format") != FORMAT:
        raise WeightFileError(f"{path} is not a model file of tools/export_model.py (format={raw.get('format')!r})")
    try:
        meta = json.loads(raw["model"])
    except (KeyError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: its model metadata is missing or damaged ({e})") from e
    for key in ("framework", "config", "dinov3"):
        if key not in meta:
            raise WeightFileError(f"{path}: its metadata has no {key!r}; the file is damaged")
    return tensors, meta


def dinov3_reference(record: Mapping[str, Any], key: str) -> Dict[str, Any]:
    """How an export names its DINOv3: the file name (no machine's folders), key and sha256."""
    weights = record["dinov3"].get("weights")
    return {"weights": Path(weights).name if weights else None, "sha256": record["dinov3"].get("sha256"),
            "key": key, "arch": record["dinov3"]["arch"]}


def find_dinov3(meta: Mapping[str, Any], config_dir: Optional[PathLike] = None) -> Optional[str]:
    """The DINOv3 file an export references, found by the lookup rule and checked by its sha256."""
    ref = meta["dinov3"]
    if ref.get("weights") is None:
        return None
    return find_weight_file(ref["weights"], ref["key"], sha256=ref.get("sha256"), config_dir=config_dir)


def check_loaded(result, path: PathLike, allowed_missing=()) -> None:
    """``load_state_dict(strict=False)``'s result: only the training record may be missing."""
    from .checkpoints import RECORD_KEY

    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] != RECORD_KEY and k not in allowed_missing]
    if missing or result.unexpected_keys:
        raise WeightFileError(f"{path} does not fit the model its config builds: missing {missing[:6]}, "
                              f"unexpected {list(result.unexpected_keys)[:6]}")


def load_exported_model(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """The model of an export (eval mode, on ``device``). MMSegmentation: the segmentor, with ``cfg``
    and ``dataset_meta`` as ``mmseg.apis.init_model`` sets them. Detectron2: ``(model, cfg)``, the
    detector and a LazyConfig holding its ``model`` and test-time ``dataloader.test.mapper``."""
    tensors, meta = read_model_file(path)
    if meta["framework"] == "mmseg":
        from .mmseg.export import build_exported

        return build_exported(tensors, meta, path, device)
    if meta["framework"] == "detectron2":
        from .d2.export import build_exported

        return build_exported(tensors, meta, path, device)
    raise WeightFileError(f"{path}: unknown framework {meta['framework']!r}")
