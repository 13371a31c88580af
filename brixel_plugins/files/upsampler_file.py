"""Upsampler weight files: safetensors tensors + JSON metadata that says how to rebuild them.

Metadata (all strings in the safetensors header, every one required):
    format      "brixel_plugins.upsampler/2"
    method      registry name ("brixel", "lift", ...)
    config      JSON of the constructor arguments (factor included; complete: no default is assumed)
    backbone    JSON of the BackboneSpec it was trained for (arch, embed_dim, depth, ...)
    extra       JSON of anything else (training resolution, images, metrics, package version)
    digest      sha256 of the entries above and every tensor's name, dtype and shape

Loading refuses a file whose header does not hold together: the digest catches an entry edited
or damaged after writing (a field no tensor implies, such as LiFT's factor or any ``zero_start``,
cannot change unnoticed); the tensors must be exactly those the config builds (names and shapes:
a JBU's layer count, FeatSharp's tile grid, a zero-start gate); the config must be complete; and
what ``extra`` records about the upsampler (method, factor, backbone) must agree with it; and the
keys a config gives beside ``weights`` must agree with the file (:func:`upsampler_from_config`). The
digest guards against damage and hand edits, not against a forger: safetensors files hold only
tensors and strings, so an untrusted file can compute something wrong but never run code.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..backbones.dinov3 import BackboneSpec
from ..backbones.weights import WeightFileError
from ..common.checks import first_non_finite
from ..common.filesystem import atomic_path
from ..upsamplers import Upsampler, UpsamplerConfig, build_upsampler
from ..version import __version__
from .lookup import find_weight_file

FORMAT = "brixel_plugins.upsampler/2"
OLD_FORMATS = ("brixel_plugins.upsampler/1",)  # written before the digest: re-export them
JSON_ENTRIES = ("config", "backbone", "extra")
PathLike = Union[str, Path]


def metadata_digest(meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the metadata entries (all but ``digest``) and each tensor's name, dtype and shape."""
    record = {"metadata": {k: v for k, v in meta.items() if k != "digest"},
              "tensors": {k: [str(t.dtype), list(t.shape)] for k, t in tensors.items()}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


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
    meta["digest"] = metadata_digest(meta, tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_safetensors(path: Path, kind: str, expected: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Tensors and raw string metadata of a safetensors file; a missing or unreadable one raises
    :class:`WeightFileError` saying which ``kind`` of file it is and what it should have been."""
    from safetensors import safe_open

    if not path.is_file():
        raise WeightFileError(f"{kind} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:
        raise WeightFileError(
            f"could not read {path} ({path.stat().st_size} bytes) as safetensors: {e}. "
            f"The file is truncated or corrupt, or not {expected}.") from e


def read_upsampler_file(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors and decoded metadata of an upsampler file, with clear errors for bad files."""
    path = Path(path)
    tensors, raw = read_safetensors(path, "upsampler weight file", "an upsampler file")
    if raw.get("format") in OLD_FORMATS:
        raise WeightFileError(f"{path} was written by an older brixel_plugins ({raw['format']}, without the "
                              f"metadata digest this version checks); export it again (tools/distill.py, "
                              f"tools/convert_weights.py)")
    if raw.get("format") != FORMAT:
        raise WeightFileError(
            f"{path} is not a brixel_plugins upsampler file (format={raw.get('format')!r}); export one "
            f"with tools/distill.py, or convert the authors' released weights with tools/convert_weights.py")
    if not raw.get("method"):
        raise WeightFileError(f"{path}: its metadata has no 'method' (the upsampler's registry name, e.g. "
                              f"'brixel'); the file is damaged or was not written by save_upsampler")
    meta = {"format": raw["format"], "method": raw["method"]}
    for key in JSON_ENTRIES:
        if key not in raw:
            raise WeightFileError(f"{path}: its metadata has no {key!r}, which loading needs; the file is "
                                  f"damaged or was not written by save_upsampler")
        try:
            meta[key] = json.loads(raw[key])
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
    if raw.get("digest") != metadata_digest(raw, tensors):
        what = "has no 'digest'" if "digest" not in raw else "does not match its 'digest'"
        raise WeightFileError(f"{path}: its metadata {what}: the header was edited or damaged after "
                              f"save_upsampler wrote it, so the config it describes cannot be trusted; "
                              f"export the upsampler again")
    return tensors, meta


def check_recorded(meta: Dict[str, Any], path: PathLike) -> None:
    """What the file records about the upsampler in more than one place must agree: the config's
    ``factor`` and the ``method`` / ``factor`` / ``backbone`` of ``extra`` (tools/distill.py's)."""
    factor = meta["config"].get("factor")
    if not isinstance(factor, int) or isinstance(factor, bool):
        raise WeightFileError(f"{path}: its config {meta['config']} has no integer 'factor'")
    if {"type", "weights"} & set(meta["config"]):
        raise WeightFileError(f"{path}: its config {meta['config']} names a type or a weight file; it should hold "
                              f"constructor arguments only")
    extra = meta["extra"]
    recorded = {"method": meta["method"], "factor": factor, "backbone": meta["backbone"].get("arch")}
    clash = {k: (v, extra[k]) for k, v in recorded.items() if k in extra and extra[k] != v}
    if clash:
        raise WeightFileError(f"{path}: its metadata contradicts itself: " + ", ".join(
            f"{k}={v!r} in its {'config' if k == 'factor' else k}, {k}={e!r} in its training record"
            for k, (v, e) in clash.items()) + "; the file is damaged")


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
    check_recorded(meta, path)
    try:
        up = build_upsampler({"type": meta["method"], **meta["config"]}, spec)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightFileError(f"{path}: cannot rebuild the {meta['method']!r} upsampler its metadata describes "
                              f"(config {meta['config']}): {e}") from e
    rebuilt = json.loads(json.dumps(up.config))
    if rebuilt != meta["config"]:
        missing = sorted(set(rebuilt) - set(meta["config"]))
        raise WeightFileError(f"{path}: its config {meta['config']} is incomplete or altered"
                              + (f" (no {missing})" if missing else "")
                              + f"; the {meta['method']} upsampler it builds has config {rebuilt}")
    try:
        up.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise WeightFileError(f"{path}: tensors do not fit the {meta['method']} upsampler its config describes "
                              f"({meta['config']}): {e}") from e
    up.file_metadata, up.weight_file = meta["extra"], str(path)
    return up.to(map_location)


def upsampler_from_config(cfg: UpsamplerConfig, spec: BackboneSpec, key: str = "upsampler") -> Upsampler:
    """The one way from a config value to an upsampler, for a backbone described by ``spec``:

    - ``None`` or ``dict(type='brixel', **kwargs)``: untrained, by registry name
      (:func:`~brixel_plugins.upsamplers.build_upsampler`);
    - a path, or ``dict(weights=FILE, type=..., **kwargs)``: the weight file (an export of
      tools/distill.py or tools/convert_weights.py), found by the lookup rule of
      :mod:`brixel_plugins.files.lookup` and loaded; the file says how the upsampler is built.
      ``type`` and the other keys, when given, must agree with it, except ``factor``, which asks
      for the file's upsampler at another factor where the method can derive one
      (:meth:`Upsampler.at_factor`: a JBU stack's first layers). Anything else is refused with
      :class:`WeightFileError` naming both values.

    ``key`` is where the config sits (``model.backbone.upsampler``), for messages.
    """
    if isinstance(cfg, (str, os.PathLike)):
        path, wanted, key_of_file = cfg, {}, key
    elif isinstance(cfg, Mapping) and cfg.get("weights") is not None:
        wanted = dict(copy.deepcopy(cfg))
        path, key_of_file = wanted.pop("weights"), f"{key}.weights"
    else:
        return build_upsampler(cfg, spec)
    path = find_weight_file(path, key_of_file)
    up = load_upsampler(path, spec, method=wanted.pop("type", None))
    factor = wanted.pop("factor", up.factor)
    clash = {k: (v, up.config.get(k)) for k, v in wanted.items() if up.config.get(k) != v}
    if clash:
        raise WeightFileError(
            f"{path} holds a {up.method} upsampler built with "
            + ", ".join(f"{k}={have!r}" for k, (_, have) in clash.items()) + ", but the config asks for "
            + ", ".join(f"{k}={want!r}" for k, (want, _) in clash.items())
            + "; drop these keys from the config (the file says how the upsampler is built) or use a matching file")
    return up if factor == up.factor else up.at_factor(factor, source=str(path))


def convert_release(src: PathLike, dst: PathLike, method: str, spec: BackboneSpec, **config) -> Path:
    """Convert the authors' released ``.pth`` of ``method`` (their key layout) for the backbone
    ``spec`` into our upsampler file; ``config`` goes to the constructor (e.g. ``factor``)."""
    from ..backbones.weights import read_state_dict

    src = Path(src)
    up = build_upsampler({"type": method, **config}, spec)
    read = getattr(up, "read_release", read_state_dict)  # a method whose release files hold more than tensors
    up.load_release_state_dict(read(src), source=str(src))
    return save_upsampler(dst, up, extra={"converted_from": src.name, "source": "release"})
