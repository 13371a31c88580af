"""What every trainer's checkpoints share (mmengine and Detectron2 alike; torch only, no framework):

- **Safe reading.** Files are read with torch's ``weights_only`` unpickler; the project's own
  checkpoints hold nothing but tensors and plain Python types. ``.pkl`` files go through
  :func:`restricted_pickle_load` (numpy arrays and plain types, nothing that runs code).
  Checkpoints of stock mmengine (message-hub ``HistoryBuffer`` objects, numpy arrays) are read
  with exactly those classes allowed, for that one load (:func:`trusted_checkpoint_globals`).
- **One resume rule.** :func:`resume_candidates` (the pointer file's checkpoint, then the periodic
  ones, newest step first) and :func:`resume_newest` (the first that loads, each skipped one
  logged with its reason).
- **Training records.** A model's frozen backbone module stores, in every ``state_dict``, what it
  was built with (DINOv3 arch and file hash, upsampler method, config and file hash,
  ``train_upsampler``): :func:`training_record`. Loading compares it with the model it is loaded
  into (:func:`check_record`) and compares every tensor's shape and the key sets
  (:func:`state_dict_problems`); a mismatch is a :class:`CheckpointMismatchError` naming both
  sides, unless ``BRIXEL_PARTIAL_LOAD=1`` asks for a partial load (then it is a loud warning).
"""
from __future__ import annotations

import importlib
import io
import json
import logging
import os
import pickle
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)

PARTIAL_LOAD_ENV = "BRIXEL_PARTIAL_LOAD"
RECORD_FORMAT = "brixel_plugins.training_record/1"
RECORD_KEY = "_extra_state"  # torch's state-dict key of Module.get_extra_state


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded (missing, empty, truncated, or holding untrusted objects)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was trained with another model than the one it is loaded into."""


# -- safe reading --------------------------------------------------------------------------------
# What stock mmengine checkpoints hold besides tensors. HistoryBuffer pickles its statistics methods
# as getattr(HistoryBuffer, 'min'); torch's unpickler refuses to *call* anything not allow-listed.
# The project's own checkpoints need none of these (see engine.loading.plain_checkpoint).
_TRUSTED_PREFIXES = ("numpy.dtypes.",)
_TRUSTED = (
    "mmengine.logging.history_buffer.HistoryBuffer",
    "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "builtins.getattr",
)


def _resolve(name: str):
    mod, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def checkpoint_globals(path: str) -> List[str]:
    """Names of the non-tensor globals a torch checkpoint file would unpickle (reads no tensors)."""
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def is_zip_checkpoint(path: str) -> bool:
    """torch.save's format since 1.6 (a zip archive); older files are one pickle stream, which
    torch.load still reads but which cannot be inspected without loading."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _untrusted(names: List[str]) -> List[str]:
    return [n for n in names if n not in _TRUSTED and not n.startswith(_TRUSTED_PREFIXES)]


def unloadable_reason(path: str) -> Optional[str]:
    """Why the local file ``path`` cannot be loaded as a checkpoint, or None if it can be tried.

    Cheap: reads the zip directory and the pickle, not the tensors (a truncated file has lost its
    zip directory, which sits at the end)."""
    if not os.path.isfile(path):
        return "file not found"
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    if not is_zip_checkpoint(path):
        return None  # the legacy format: torch.load (weights_only) is the check
    try:
        names = checkpoint_globals(path)
    except Exception as e:  # torch raises several types for bad bytes
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        return f"not a readable torch checkpoint ({size} bytes, truncated or corrupt): {type(e).__name__}: {msg}"
    bad = _untrusted(names)
    if bad:
        return (f"would unpickle objects outside what mmengine checkpoints hold: {bad}; refused because "
                f"unpickling them can run code")
    return None


@contextmanager
def trusted_checkpoint_globals(path: Optional[str]) -> Iterator[None]:
    """Allow the globals stock mmengine checkpoints need while ``path`` is loaded, or refuse it.
    Paths that are not local files (URLs, ``open-mmlab://``) load with torch's defaults."""
    names = checkpoint_globals(path) if path and os.path.isfile(path) and is_zip_checkpoint(path) else []
    bad = _untrusted(names)
    if bad:
        raise CheckpointError(
            f"{path} would unpickle objects outside what mmengine checkpoints hold: {bad}; refused because "
            f"unpickling them can run code")
    allowed = [_resolve(n) for n in names]
    if "numpy.dtype" in names:
        # numpy.dtype('f8') rebuilds as an instance of numpy.dtypes.Float64DType, which the
        # unpickler checks too although the file never names it: allow numpy's dtype classes
        import numpy.dtypes

        allowed += [v for v in vars(numpy.dtypes).values() if isinstance(v, type) and issubclass(v, numpy.dtype)]
    with torch.serialization.safe_globals(allowed):
        yield


def load_checkpoint_file(path: str, map_location="cpu") -> Any:
    """``torch.load`` of a local checkpoint with ``weights_only`` (and the allow-list above), with a
    :class:`CheckpointError` saying why a file cannot be read."""
    reason = unloadable_reason(path)
    if reason:
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}")
    with trusted_checkpoint_globals(path):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001  bad bytes of the legacy format raise anything
            if not isinstance(e, pickle.UnpicklingError) and is_zip_checkpoint(path):
                raise
            raise CheckpointError(f"cannot load checkpoint {path}: {_refused_pickle(path, e)}") from None


def _refused_pickle(path: str, e: Exception) -> str:
    """Why torch's safe unpickler refused ``path``, in our words: torch's own message suggests
    ``weights_only=False``, i.e. running whatever the file holds."""
    text = str(e)
    if not isinstance(e, pickle.UnpicklingError) or "GLOBAL" not in text and "Unsupported" not in text:
        return (f"not a torch checkpoint ({os.path.getsize(path)} bytes: neither torch.save's zip format nor a "
                f"pickle torch reads; {type(e).__name__}: {(text.splitlines() or [''])[0][:200]})")
    found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
    holds = f" (e.g. {', '.join(found)})" if found else ""
    if not is_zip_checkpoint(path):
        return (f"a legacy torch file (one pickle stream, not torch.save's zip format since torch 1.6) holding "
                f"objects other than tensors and plain Python types{holds}; refused because unpickling it can run "
                f"code. Re-save its tensors with torch.save from code you trust")
    return f"holds objects other than tensors and plain Python types{holds}; refused because unpickling it can run code"


# numpy's array and scalar pickles, and the containers of plain data; nothing else is found
_PICKLE_ALLOWED = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "complex"), ("builtins", "bytearray"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: only numpy arrays and plain Python types are read from "
            f".pkl files (a pickle can run code)")


def restricted_pickle_load(file, encoding: str = "latin1") -> Any:
    """``pickle.load`` that builds numpy arrays and plain types only (Detectron2's model-zoo
    ``.pkl`` files); anything else raises ``pickle.UnpicklingError`` before it is constructed."""
    return _RestrictedUnpickler(file, encoding=encoding).load()


def restricted_pickle_loads(data: bytes, encoding: str = "latin1") -> Any:
    return restricted_pickle_load(io.BytesIO(data), encoding=encoding)


# -- one resume rule -----------------------------------------------------------------------------
def resume_candidates(folder: str, pointer: Optional[str], periodic: "re.Pattern[str]",
                      extra_folders: Sequence[str] = ()) -> List[str]:
    """Checkpoints to resume from, best first: ``pointer`` (the file a ``last_checkpoint`` tag
    names), then the periodic checkpoints (``periodic`` matches their file names; its group 1 is the
    step, ``final`` counts as the newest) in ``folder`` and ``extra_folders``, newest step first."""
    found: List[Tuple[float, str]] = []
    for f in dict.fromkeys(os.path.abspath(f) for f in (folder, *extra_folders)):
        if os.path.isdir(f):
            for name in os.listdir(f):
                m = periodic.match(name)
                if m:
                    step = float("inf") if m.group(1) == "final" else int(m.group(1))
                    found.append((step, os.path.join(f, name)))
    ordered = ([pointer] if pointer else []) + [p for _, p in sorted(found, reverse=True)]
    seen, out = set(), []
    for p in ordered:
        if os.path.abspath(p) not in seen:
            seen.add(os.path.abspath(p))
            out.append(p)
    return out


def resume_newest(candidates: Iterable[str], resume: Callable[[str], Any], log: logging.Logger | Any,
                  folder: str) -> Tuple[Optional[str], Any]:
    """Resume from the first of ``candidates`` that loads: ``(path, resume(path))``, or
    ``(None, None)`` when there is none. A file that cannot be read is skipped and logged with its
    reason; a checkpoint of another model (:class:`CheckpointMismatchError`) stops at once; when
    every candidate fails, :class:`CheckpointError` lists them all."""
    skipped: List[Tuple[str, str]] = []
    for path in candidates:
        reason = unloadable_reason(path)
        if reason is None:
            try:
                result = resume(path)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # unreadable despite a sound zip directory: the next newest
                reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            else:
                for bad, why in skipped:
                    log.warning(f"resume: skipped checkpoint {bad}: {why}")
                log.info(f"resuming from {path}" + (f" (the newest loadable of {len(skipped) + 1})" if skipped else ""))
                return path, result
        skipped.append((path, reason))
    if skipped:
        raise CheckpointError(f"resume: no loadable checkpoint in {folder}: "
                              + "; ".join(f"{p}: {why}" for p, why in skipped)
                              + ". Delete or move them, or train without --resume.")
    return None, None


# -- training records ----------------------------------------------------------------------------
def partial_load_allowed() -> bool:
    return os.environ.get(PARTIAL_LOAD_ENV, "") not in ("", "0")


def refuse_or_warn(problems: List[str], what: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing ``problems``, or warn when a partial load was
    asked for explicitly (``BRIXEL_PARTIAL_LOAD=1``)."""
    if not problems:
        return
    text = f"{what}:\n  - " + "\n  - ".join(problems)
    if partial_load_allowed():
        msg = f"{PARTIAL_LOAD_ENV}=1: loading anyway, the mismatched parts keep their current values. {text}"
        warnings.warn(msg, UserWarning, stacklevel=3)
        logger.warning(msg)
        return
    raise CheckpointMismatchError(
        f"{text}\nUse the config the checkpoint was trained with; to fine-tune from it under another "
        f"config on purpose, set {PARTIAL_LOAD_ENV}=1 (mismatched parts are then skipped, loudly).")


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def training_record(dinov3, upsampler, upsampler_file: Optional[str], train_upsampler: bool) -> Dict[str, Any]:
    """What a frozen-backbone module was built with, as plain types (``upsampler=None``: none)."""
    from .backbones.weights import file_sha256

    def file_entry(path: Optional[str]) -> Dict[str, Optional[str]]:
        if path is None:
            return {"weights": None, "sha256": None}
        return {"weights": os.path.abspath(path), "sha256": file_sha256(path) if os.path.isfile(path) else None}

    spec = dinov3.spec
    record = {"format": RECORD_FORMAT,
              "dinov3": {"arch": spec.arch, "embed_dim": spec.embed_dim, "depth": spec.depth,
                         "num_heads": spec.num_heads, **file_entry(dinov3.weights)},
              "upsampler": {"method": "none"}}
    if upsampler is not None:
        record["upsampler"] = {"method": upsampler.method, "config": _plain(upsampler.config),
                               "train_upsampler": bool(train_upsampler), **file_entry(upsampler_file)}
    return record


def encode_record(record: Mapping[str, Any]) -> torch.Tensor:
    """The record as UTF-8 JSON in a uint8 tensor: every tensor-only consumer of state dicts
    (weights_only, fvcore's shape checks, safetensors, device moves) carries it unchanged."""
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def decode_record(state: Any) -> Dict[str, Any]:
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
        try:
            record = json.loads(bytes(state.tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"the checkpoint's training record is damaged: {e}") from e
        if isinstance(record, dict) and record.get("format") == RECORD_FORMAT:
            return record
    raise CheckpointError(f"the checkpoint's training record is not one this version reads ({type(state).__name__})")


def _describe_file(entry: Mapping[str, Any]) -> str:
    if entry.get("weights") is None:
        return "random init (no file)"
    sha = entry.get("sha256")
    return f"{entry['weights']} (sha256 {sha[:16] if sha else '?'}...)"


def record_problems(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """How the model a checkpoint was trained with (``recorded``) differs from ``current``."""
    out = []
    a, b = recorded["dinov3"], current["dinov3"]
    arch = ("arch", "embed_dim", "depth", "num_heads")
    if any(a.get(k) != b.get(k) for k in arch):
        out.append("DINOv3: the checkpoint was trained on " + ", ".join(f"{k}={a.get(k)}" for k in arch)
                   + "; this model is " + ", ".join(f"{k}={b.get(k)}" for k in arch))
    elif a.get("sha256") != b.get("sha256"):
        out.append(f"DINOv3 weights: the checkpoint was trained with {_describe_file(a)}; this model loads "
                   f"{_describe_file(b)} (model.backbone[.net].weights)")
    a, b = recorded["upsampler"], current["upsampler"]
    if a.get("method") != b.get("method") or a.get("config") != b.get("config"):
        show = lambda u: u["method"] + (f" {json.dumps(u.get('config'), sort_keys=True)}" if "config" in u else "")  # noqa: E731
        out.append(f"upsampler: the checkpoint was trained with {show(a)}; this model has {show(b)}")
    elif a.get("method") != "none":
        if a.get("train_upsampler") != b.get("train_upsampler"):
            out.append(f"train_upsampler: {a.get('train_upsampler')} in the checkpoint, {b.get('train_upsampler')} "
                       f"in this model")
        elif not a.get("train_upsampler") and a.get("sha256") != b.get("sha256"):
            # a frozen upsampler is not in the checkpoint: its file must be the one trained with
            out.append(f"upsampler weights: the checkpoint was trained with {_describe_file(a)}; this model "
                       f"loads {_describe_file(b)}")
    return out


def check_record(state: Any, current: Mapping[str, Any], where: str) -> None:
    """``set_extra_state`` of the frozen-backbone modules: refuse (or warn about) a checkpoint
    trained with another backbone or upsampler than ``current``."""
    recorded = decode_record(state)
    refuse_or_warn(record_problems(recorded, current),
                   f"the checkpoint does not fit this model ({where} was trained with other parts)")


def state_dict_problems(model_state: Mapping[str, Any], checkpoint_state: Mapping[str, Any],
                        optional: Tuple[str, ...] = ()) -> List[str]:
    """Tensors whose shapes differ (e.g. another ``num_classes``), and keys only one side has.
    Keys of the model starting with one of ``optional`` (parts that load from their own files,
    training records of old checkpoints) may be missing from the checkpoint."""
    out = []
    for k, v in checkpoint_state.items():
        if k in model_state and k.split(".")[-1] != RECORD_KEY and isinstance(v, torch.Tensor) \
                and tuple(v.shape) != tuple(model_state[k].shape):
            out.append(f"{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(model_state[k].shape)} in this "
                       f"model" + (" (another num_classes?)" if k.rsplit(".", 1)[0].endswith(("conv_seg", "cls_score",
                                                                                            "bbox_pred", "predictor"))
                                  else ""))
    missing = [k for k in model_state if k not in checkpoint_state and not k.startswith(optional)
               and k.split(".")[-1] != RECORD_KEY]
    unexpected = [k for k in checkpoint_state if k not in model_state]
    if missing:
        out.append(f"{len(missing)} tensors of this model are not in the checkpoint: {missing[:6]}"
                   f"{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        out.append(f"{len(unexpected)} tensors of the checkpoint are not in this model: {unexpected[:6]}"
                   f"{' ...' if len(unexpected) > 6 else ''}")
    return out


class RecordsTraining:
    """Mixin of the adapters' frozen-backbone modules (they hold ``featurizer``, a DenseFeaturizer,
    and ``train_upsampler``): every ``state_dict()`` carries the :func:`training_record` as
    ``<prefix>._extra_state``, and loading a state dict checks it (torch's ``get_extra_state`` /
    ``set_extra_state``, so mmengine's, Detectron2's and torch's own loaders all check it)."""

    config_key = "model.backbone"  # where the module sits in a config, for messages

    def training_record(self) -> Dict[str, Any]:
        up = self.featurizer.upsampler
        return training_record(self.featurizer.backbone, up, up.weight_file, self.train_upsampler)

    def get_extra_state(self) -> torch.Tensor:
        return encode_record(self.training_record())

    def set_extra_state(self, state: Any) -> None:
        check_record(state, self.training_record(), self.config_key)


def check_records(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Check every training record of ``state`` against the module it belongs to in ``model``
    (before tensors are compared: "trained with another upsampler" says more than the shapes)."""
    for key, record in state.items():
        if key.rsplit(".", 1)[-1] == RECORD_KEY:
            owner = key[: -len(RECORD_KEY) - 1]
            try:
                module = model.get_submodule(owner) if owner else model
            except AttributeError:
                continue  # reported as an unexpected key
            if isinstance(module, RecordsTraining):
                module.set_extra_state(record)
