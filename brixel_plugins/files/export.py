"""One self-contained model file for inference on another machine (``tools/export_model.py``).

A safetensors file: the tensors of everything that is not DINOv3 (the head, the neck, the trained
or frozen upsampler), and, as JSON in the header, the model's config (plain data: a dict, never
code), the class names and palette, and DINOv3 *by reference*: its file name, the config key that
sets it and its sha256. Loading finds DINOv3 by the lookup rule of
:mod:`brixel_plugins.files.lookup` (the export's folder, ``$BRIXEL_WEIGHTS_DIR``, the cwd) and
refuses a file with other bytes.

A model file is data. Before anything is built, loading checks

- the ``digest`` entry: sha256 over the header JSON and every tensor (name, dtype, shape, bytes);
  a file edited after export is refused. It guards against damage and hand edits, not a forger;
- the config, by the adapters: every class it names must be on an exact allow-list (MMSegmentation:
  plain names in the scope's registries; Detectron2: an explicit set of classes), so a file can
  only build what the project and the frameworks register, never import or call anything else.

Files of the first format (``brixel_plugins.model/1``, without a digest) are refused with the
command that exports them again.

    import brixel_plugins.mmseg                                       # registers the mmseg builder
    model = load_exported_model("brixel_vits16_ade20k.safetensors")   # mmseg: like init_model
    import brixel_plugins.d2                                          # registers the detectron2 builder
    model, cfg = load_exported_model("mask_rcnn_brixel.safetensors")  # detectron2: model + its LazyConfig

Framework-neutral: this module owns the file format and never imports an adapter. The adapters
(:mod:`brixel_plugins.mmseg.export`, :mod:`brixel_plugins.d2.export`) write and rebuild their models:
importing ``brixel_plugins.mmseg`` / ``brixel_plugins.d2`` registers each one's builder here
(:func:`register_model_format`); a file of a framework whose adapter was not imported is refused
with the import to add.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from ..backbones.weights import WeightFileError
from ..common.checks import first_non_finite
from ..common.filesystem import atomic_path
from ..version import __version__
from .lookup import find_weight_file
from .upsampler_file import metadata_digest, read_safetensors

FORMAT = "brixel_plugins.model/2"
OLD_FORMATS = ("brixel_plugins.model/1",)  # written before the digest: exported again
PathLike = Union[str, Path]
REEXPORT = "python tools/export_model.py CONFIG CHECKPOINT OUT.safetensors"


def model_digest(raw: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the header entries (all but ``digest``), each tensor's name, dtype and shape
    (:func:`brixel_plugins.files.upsampler_file.metadata_digest`) and every tensor's bytes, in name order."""
    h = hashlib.sha256(metadata_digest(raw, tensors).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode() + b"\0")
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def _reexport(meta: Mapping[str, Any]) -> str:
    """The command that writes the file again, with the config and checkpoint it came from when known."""
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if source.get("config") and source.get("checkpoint"):
        opts = " ".join(source.get("opts") or [])
        return (f"python tools/export_model.py {source['config']} {source['checkpoint']} OUT.safetensors"
                + (f" {opts}" if opts else ""))
    return REEXPORT


def write_model_file(out: PathLike, tensors: Mapping[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-able: framework, config, dinov3, dataset_meta, record)."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    bad = first_non_finite(tensors.items())
    if bad:
        raise ValueError(f"refusing to write {out}: {bad[0]} holds {bad[1]} NaN/Inf values of {bad[2]}")
    header = {"format": FORMAT, "package_version": __version__, **meta}
    raw = {"format": FORMAT, "model": json.dumps(header, sort_keys=True)}
    raw["digest"] = model_digest(raw, tensors)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=raw)
    return out


def _header(path: Path, raw: Mapping[str, str]) -> Dict[str, Any]:
    try:
        meta = json.loads(raw["model"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: its model metadata is missing or damaged ({e})") from e
    if not isinstance(meta, dict):
        raise WeightFileError(f"{path}: its model metadata is not a JSON object; the file is damaged")
    return meta


def read_model_file(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors and header of a model file, its digest checked (nothing is built here)."""
    path = Path(path)
    tensors, raw = read_safetensors(path, "model file", "a model file of tools/export_model.py")
    if raw.get("format") in OLD_FORMATS:
        meta = _header(path, raw) if "model" in raw else {}
        raise WeightFileError(f"{path} was written by an older brixel_plugins ({raw['format']}, without the digest "
                              f"this version checks before building anything); export it again: {_reexport(meta)}")
    if raw.get("format") != FORMAT:
        raise WeightFileError(f"{path} is not a model file of tools/export_model.py (format={raw.get('format')!r})")
    meta = _header(path, raw)
    if raw.get("digest") != model_digest(raw, tensors):
        what = "has no digest" if "digest" not in raw else "does not match its digest"
        raise WeightFileError(f"{path} was modified after export: its header or tensors {what} (sha256 over the "
                              f"config JSON and every tensor). Model files are not edited by hand; change the "
                              f"config and export again: {_reexport(meta)}")
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
    """The DINOv3 file an export references, found by the lookup rule and checked by its sha256;
    ``config_dir``: the export's folder (an export is its own config)."""
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


def check_same_dinov3(meta: Mapping[str, Any], built: Mapping[str, Any], path: PathLike) -> None:
    """The DINOv3 an export was trained on (its recorded arch, file hash or random-init seed and
    digest) must be the one just built: a random init drawn with another seed, or by a torch/timm
    that draws other values from the same seed, would give other features without a word."""
    from .checkpoints import record_problems

    recorded = (meta.get("record") or {}).get("dinov3")
    if recorded is None:
        raise WeightFileError(f"{path}: its metadata records no DINOv3; the file is damaged. {_reexport(meta)}")
    none = {"method": "none"}
    problems = record_problems({"dinov3": recorded, "upsampler": none}, {"dinov3": built["dinov3"], "upsampler": none})
    if problems:
        raise WeightFileError(f"{path} was exported from a model on another DINOv3: " + "; ".join(problems))


# framework -> its builder ``build(tensors, meta, path, device)``, registered by the adapter's export module
# at import (the neutral module never imports an adapter)
_BUILDERS: Dict[str, Callable[..., Any]] = {}
# for the message only: the module whose import registers each framework the project writes
ADAPTERS = {"mmseg": "brixel_plugins.mmseg", "detectron2": "brixel_plugins.d2"}


def register_model_format(framework: str, build: Callable[..., Any]) -> None:
    """Let :func:`load_exported_model` rebuild the files of ``framework`` (the ``framework`` entry an
    adapter writes) with ``build(tensors, meta, path, device)``, which checks the config before
    building anything. Each adapter calls it once, at import."""
    if _BUILDERS.get(framework, build) is not build:
        raise ValueError(f"model files of framework {framework!r} already have a builder: "
                         f"{_BUILDERS[framework].__module__}.{_BUILDERS[framework].__qualname__}")
    _BUILDERS[framework] = build


def load_exported_model(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """The model of an export (eval mode, on ``device``), rebuilt by its framework's adapter, which must
    have been imported (``import brixel_plugins.mmseg`` / ``import brixel_plugins.d2``). MMSegmentation:
    the segmentor, with ``cfg`` and ``dataset_meta`` as ``mmseg.apis.init_model`` sets them. Detectron2:
    ``(model, cfg)``, the detector and a LazyConfig holding its ``model`` and test-time
    ``dataloader.test.mapper``."""
    tensors, meta = read_model_file(path)  # the digest is checked here, the config by the builder
    framework = meta["framework"]
    if framework not in _BUILDERS:
        if framework in ADAPTERS:
            raise WeightFileError(f"{path} is a {framework} model file, and no {framework} builder is registered: "
                                  f"import {ADAPTERS[framework]} first (its import registers it), e.g. "
                                  f"`import {ADAPTERS[framework]}`, then call load_exported_model again")
        raise WeightFileError(f"{path}: unknown framework {framework!r} (registered: {', '.join(sorted(_BUILDERS))})")
    return _BUILDERS[framework](tensors, meta, path, device)
