"""Upsampler weight files: safetensors tensors + JSON metadata that says how to rebuild them.

Metadata (all strings in the safetensors header):
    format      "brixel_plugins.upsampler/1"
    method      registry name ("brixel", "lift", ...)
    config      JSON of the constructor arguments (factor included)
    backbone    JSON of the BackboneSpec it was trained for (arch, embed_dim, depth, ...)
    extra       JSON of anything else (training resolution, images, metrics, package version)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .backbones.dinov3 import BackboneSpec
from .backbones.weights import WeightFileError
from .checks import first_non_finite
from .upsamplers import Upsampler, build_upsampler
from .utils import atomic_path
from .version import __version__

FORMAT = "brixel_plugins.upsampler/1"
PathLike = Union[str, Path]


def save_upsampler(path: PathLike, upsampler: Upsampler, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``upsampler``'s state dict (parameters and buffers, e.g. PHI-S statistics) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    upsampler = upsampler.for_export()  # e.g. spectral reparametrisation baked into plain weights
    tensors = {k: v.detach().cpu().contiguous() for k, v in upsampler.state_dict().items()}
    bad = first_non_finite(tensors.items())
    if bad:
        raise ValueError(f"refusing to write {path}: the {upsampler.method} upsampler's {bad[0]} holds "
                         f"{bad[1]} NaN/Inf values of {bad[2]} (did training diverge?)")
    meta = {
        "format": FORMAT,
        "method": upsampler.method,
        "config": json.dumps(upsampler.config, sort_keys=True),
        "backbone": json.dumps(upsampler.spec.to_dict(), sort_keys=True),
        "extra": json.dumps({"package_version": __version__, **(extra or {})}, sort_keys=True, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_upsampler_file(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors and decoded metadata of an upsampler file, with clear errors for bad files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"upsampler weight file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise WeightFileError(
            f"could not read {path} ({path.stat().st_size} bytes) as safetensors: {e}. "
            f"The file is truncated or corrupt, or not an upsampler file.") from e
    if raw.get("format") != FORMAT:
        raise WeightFileError(
            f"{path} is not a brixel_plugins upsampler file (format={raw.get('format')!r}); export one "
            f"with tools/distill.py, or convert the authors' released weights with tools/convert_weights.py")
    if not raw.get("method"):
        raise WeightFileError(f"{path}: its metadata has no 'method' (the upsampler's registry name, e.g. "
                              f"'brixel'); the file is damaged or was not written by save_upsampler")
    meta = {"format": raw["format"], "method": raw["method"]}
    for key in ("config", "backbone", "extra"):
        try:
            meta[key] = json.loads(raw.get(key, "{}"))
        except json.JSONDecodeError as e:
            raise WeightFileError(f"{path}: metadata entry {key!r} is not valid JSON ({e}); the file is "
                                  f"damaged or was not written by save_upsampler") from e
        if not isinstance(meta[key], dict):
            raise WeightFileError(f"{path}: metadata entry {key!r} should be a JSON object, got "
                                  f"{type(meta[key]).__name__}")
    bad = first_non_finite(tensors.items())
    if bad:
        raise WeightFileError(f"{path}: tensor {bad[0]} holds {bad[1]} NaN/Inf values of {bad[2]}; "
                              f"these weights come from a diverged run and cannot be used")
    return tensors, meta


def check_compatible(meta: Dict[str, Any], spec: BackboneSpec, method: Optional[str], path: PathLike) -> None:
    """Refuse a file made for another method or another backbone, saying what each is."""
    if method is not None and meta["method"] != method:
        raise WeightFileError(f"{path} holds a {meta['method']!r} upsampler, but {method!r} was asked for")
    made_for = meta["backbone"]
    keys = ("arch", "embed_dim", "depth")
    if any(made_for.get(k) != getattr(spec, k) for k in keys):
        got = ", ".join(f"{k}={made_for.get(k)}" for k in keys)
        want = ", ".join(f"{k}={getattr(spec, k)}" for k in keys)
        raise WeightFileError(
            f"{path} was trained for a backbone with {got}, but this backbone has {want}; "
            f"use the {meta['method']} file made for {spec.arch} (or distill one with tools/distill.py)")


def load_upsampler(path: PathLike, spec: BackboneSpec, method: Optional[str] = None,
                   map_location: Union[str, torch.device] = "cpu") -> Upsampler:
    """Rebuild an upsampler from its file for the backbone ``spec`` (checked), weights loaded strictly."""
    tensors, meta = read_upsampler_file(path)
    check_compatible(meta, spec, method, path)
    try:
        up = build_upsampler({"type": meta["method"], **meta["config"]}, spec)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightFileError(f"{path}: cannot rebuild the {meta['method']!r} upsampler its metadata describes "
                              f"(config {meta['config']}): {e}") from e
    try:
        up.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise WeightFileError(f"{path}: tensors do not fit the {meta['method']} upsampler it names: {e}") from e
    up.file_metadata = meta["extra"]
    return up.to(map_location)


def convert_release(src: PathLike, dst: PathLike, method: str, spec: BackboneSpec, **config) -> Path:
    """Convert the authors' released ``.pth`` of ``method`` (their key layout) for the backbone
    ``spec`` into our upsampler file; ``config`` goes to the constructor (e.g. ``factor``)."""
    from .backbones.weights import read_state_dict

    src = Path(src)
    up = build_upsampler({"type": method, **config}, spec)
    up.load_release_state_dict(read_state_dict(src), source=str(src))
    return save_upsampler(dst, up, extra={"converted_from": src.name, "source": "release"})
