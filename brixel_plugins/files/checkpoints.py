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
  was built with (DINOv3 arch and file hash, or the seed and tensor digest of a random init,
  upsampler method, config and file hash, ``train_upsampler``): :func:`training_record`. Loading
  compares it with the model it is loaded into (:func:`record_problems`) and compares every tensor's
  shape and the key sets (:func:`state_dict_problems`); a mismatch is a
  :class:`CheckpointMismatchError` naming both sides, unless ``BRIXEL_PARTIAL_LOAD=1`` asks for a
  partial load (then it is a loud warning).
- **Our components refuse what is not theirs**, whichever loader calls them (mmengine's
  ``load_checkpoint`` with ``strict=False``, mmseg's ``init_model``, torch's ``load_state_dict``,
  Detectron2's checkpointers): :class:`RecordsTraining` and :func:`module_state_problems` check, in
  ``_load_from_state_dict``, that the state dict has the module's training record and its own keys
  at their shapes. A loader that checks a state dict itself runs the load in
  :func:`checked_elsewhere`.
"""
from __future__ import annotations

import contextvars
import importlib
import io
import json
import logging
import os
import pickle
import re
import sys
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
    from ..backbones.weights import file_sha256

    def file_entry(path: Optional[str]) -> Dict[str, Optional[str]]:
        if path is None:
            return {"weights": None, "sha256": None}
        return {"weights": os.path.abspath(path), "sha256": file_sha256(path) if os.path.isfile(path) else None}

    spec = dinov3.spec
    record = {"format": RECORD_FORMAT,
              "dinov3": {"arch": spec.arch, "embed_dim": spec.embed_dim, "depth": spec.depth,
                         "num_heads": spec.num_heads, **file_entry(dinov3.weights)},
              "upsampler": {"method": "none"}}
    if dinov3.weights is None:
        record["dinov3"].update(init_seed=dinov3.init_seed, init_digest=dinov3.init_digest)
    if upsampler is not None:
        record["upsampler"] = {"method": upsampler.method, "config": _plain(upsampler.config),
                               "train_upsampler": bool(train_upsampler), **file_entry(upsampler_file)}
    return record


RECORD_BLOCK = 4096


def encode_record(record: Mapping[str, Any]) -> torch.Tensor:
    """The record as UTF-8 JSON in a uint8 tensor: every tensor-only consumer of state dicts
    (weights_only, fvcore's shape checks, safetensors, device moves) carries it unchanged. Padded
    with zero bytes to a multiple of 4 KiB, so two records (other paths, another config) have one
    shape and fvcore's shape check (stock ``DetectionCheckpointer``) does not drop it."""
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    data += bytes(-len(data) % RECORD_BLOCK)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_record(state: Any) -> Dict[str, Any]:
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1:
        try:
            record = json.loads(bytes(state.tolist()).rstrip(b"\0").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"the checkpoint's training record is damaged: {e}") from e
        if isinstance(record, dict) and record.get("format") == RECORD_FORMAT:
            return record
    raise CheckpointError(f"the checkpoint's training record is not one this version reads ({type(state).__name__})")


def _describe_file(entry: Mapping[str, Any]) -> str:
    if entry.get("weights") is None:
        if entry.get("init_seed") is None:
            return "a random init whose seed was not recorded"
        return f"a random init, init_seed={entry['init_seed']} (digest {(entry.get('init_digest') or '?')[:16]}...)"
    sha = entry.get("sha256")
    return f"{entry['weights']} (sha256 {sha[:16] if sha else '?'}...)"


def record_problems(recorded: Mapping[str, Any], current: Mapping[str, Any],
                    dinov3_carried: bool = False) -> List[str]:
    """How the model a checkpoint was trained with (``recorded``) differs from ``current``.
    ``dinov3_carried``: the checkpoint holds the DINOv3 tensors themselves, equal to the model's
    (old Detectron2 checkpoints of a random init): then they, not the record, tell the backbone."""
    out = []
    a, b = recorded["dinov3"], current["dinov3"]
    arch = ("arch", "embed_dim", "depth", "num_heads")
    random_init = a.get("weights") is None and b.get("weights") is None
    if any(a.get(k) != b.get(k) for k in arch):
        out.append("DINOv3: the checkpoint was trained on " + ", ".join(f"{k}={a.get(k)}" for k in arch)
                   + "; this model is " + ", ".join(f"{k}={b.get(k)}" for k in arch))
    elif random_init and a.get("init_seed") is None and not dinov3_carried:
        out.append(f"DINOv3 weights: the checkpoint was trained on a random-init DINOv3 whose seed it does not "
                   f"record (written by an older version), and it does not hold that DINOv3: nothing can redraw "
                   f"it, so its head would run on other features. Train again (random inits are now drawn from "
                   f"model.backbone[.net].init_seed), or set {PARTIAL_LOAD_ENV}=1 to load it onto this model's "
                   f"{_describe_file(b)} anyway")
    elif random_init and not dinov3_carried and (a.get("init_seed"), a.get("init_digest")) != (
            b.get("init_seed"), b.get("init_digest")):
        why = "" if a.get("init_seed") != b.get("init_seed") else \
            " (the same seed drew other values: another torch or timm version?)"
        out.append(f"DINOv3 weights: the checkpoint was trained with {_describe_file(a)}; this model draws "
                   f"{_describe_file(b)}{why} (model.backbone[.net].init_seed)")
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


def _class_count_note(key: str, theirs: Tuple[int, ...], ours: Tuple[int, ...]) -> str:
    """Names a class-count mismatch as such: the rows of a classifier (mmseg's ``conv_seg``,
    Detectron2's ``cls_score`` with its background row)."""
    layer = key.rsplit(".", 1)[0]
    if theirs[1:] == ours[1:] and layer.endswith(("conv_seg", "cls_score")):
        background = int(layer.endswith("cls_score"))
        return f" (the checkpoint has {theirs[0] - background} classes, this model {ours[0] - background})"
    return " (another num_classes?)" if layer.endswith(("bbox_pred", "predictor")) else ""


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
                       f"model{_class_count_note(k, tuple(v.shape), tuple(model_state[k].shape))}")
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


_CHECKED_ELSEWHERE: contextvars.ContextVar[bool] = contextvars.ContextVar("brixel_checked_elsewhere", default=False)


@contextmanager
def checked_elsewhere() -> Iterator[None]:
    """Loads inside this block skip the components' own checks: for loaders that have checked the
    state dict themselves (Detectron2's checkpointer here, which removes the training records
    before fvcore's loader; exports, whose file holds the record and its own key check)."""
    token = _CHECKED_ELSEWHERE.set(True)
    try:
        yield
    finally:
        _CHECKED_ELSEWHERE.reset(token)


def checked_elsewhere_now() -> bool:
    return _CHECKED_ELSEWHERE.get()


# the local names under which the stock loaders hold the file they load: mmengine's
# load_checkpoint(filename) and Runner.load_checkpoint(filename), BaseInferencer._init_model(weights),
# mmseg's init_model(checkpoint), fvcore's Checkpointer.load(path)
_FILE_LOCALS = ("filename", "path", "weights", "checkpoint")
_LOADER_MODULES = ("mmengine.", "mmseg.", "fvcore.", "detectron2.", "brixel_plugins.")


def file_being_loaded() -> Optional[str]:
    """The checkpoint file a stock loader up the call stack is loading, for messages only (a state
    dict does not know its file; None when no loader up the stack names one)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_LOADER_MODULES):
            for name in _FILE_LOCALS:
                value = frame.f_locals.get(name)
                if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                    return str(value)
        frame = frame.f_back
    return None


def check_module_state(module: torch.nn.Module, state_dict: Dict[str, Any], prefix: str, where: str,
                       problems: Sequence[str] = (), skip: Tuple[str, ...] = ()) -> None:
    """A component's own check at load: ``problems`` and :func:`module_state_problems` raise one
    :class:`CheckpointMismatchError` naming the file (when a loader up the stack names it) and
    ``where``. Under ``BRIXEL_PARTIAL_LOAD=1`` it warns, and tensors of other shapes are dropped
    from ``state_dict``: they keep the model's values whichever loader runs (torch's own raises)."""
    problems = [*problems, *module_state_problems(module, state_dict, prefix, skip)]
    if not problems:  # the stack is searched for the file only when there is something to say
        return
    refuse_or_warn(problems, f"{file_being_loaded() or 'the checkpoint'} does not fit this model ({where})")
    own = module.state_dict(prefix=prefix)
    for k in [k for k, v in state_dict.items() if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]:
        del state_dict[k]


def module_state_problems(module: torch.nn.Module, state_dict: Mapping[str, Any], prefix: str,
                          skip: Tuple[str, ...] = ()) -> List[str]:
    """How ``state_dict`` (keys under ``prefix``) differs from what ``module`` itself holds: its keys
    missing, at other shapes, or keys under ``prefix`` it does not have. Keys under ``skip``
    (relative to the module) are not compared; nor are the training records."""
    own = {prefix + k: v for k, v in module.state_dict().items()
           if not k.startswith(skip) and k.rsplit(".", 1)[-1] != RECORD_KEY}
    theirs = {k: v for k, v in state_dict.items() if k.startswith(prefix) and not k[len(prefix):].startswith(skip)
              and k.rsplit(".", 1)[-1] != RECORD_KEY}
    return state_dict_problems(own, theirs)


class RecordsTraining:
    """Mixin of the adapters' frozen-backbone modules (they hold ``featurizer``, a DenseFeaturizer,
    and ``train_upsampler``): every ``state_dict()`` carries the :func:`training_record` as
    ``<prefix>._extra_state`` (torch's ``get_extra_state``), and loading a state dict, by any loader
    and even with ``strict=False``, refuses one that is not this module's: no record, a record of
    other parts, its trainable keys missing or at other shapes, or frozen tensors other than the
    model's (``BRIXEL_PARTIAL_LOAD=1`` turns the refusal into a warning).

    One rule for the frozen parts in checkpoints (:meth:`restorable_parts`), for both adapters: a
    frozen part that the checkpoint's record rebuilds exactly (DINOv3 from its file's hash or from its
    init seed and draw digest, a frozen upsampler from its file) is left out of ``state_dict()``
    (:meth:`leave_frozen_parts_out`, which each adapter calls once built) and refilled from the
    model at load; one that a checkpoint holds anyway (old Detectron2 checkpoints of a random init)
    must equal the model's."""

    config_key = "model.backbone"  # where the module sits in a config, for messages

    def training_record(self) -> Dict[str, Any]:
        up = self.featurizer.upsampler
        return training_record(self.featurizer.backbone, up, up.weight_file, self.train_upsampler)

    def restorable_parts(self) -> Dict[str, str]:
        """``{submodule name: what restores it}`` of the frozen parts a checkpoint need not hold:
        DINOv3 (from its file or its init seed) and a frozen upsampler loaded from a file."""
        dinov3, up = self.featurizer.backbone, self.featurizer.upsampler
        out = {}
        if dinov3.weights is not None:
            out["featurizer.backbone"] = dinov3.weights
        elif dinov3.init_seed is not None:
            out["featurizer.backbone"] = f"random init, init_seed={dinov3.init_seed}"
        if not self.train_upsampler and up.weight_file is not None:
            out["featurizer.upsampler"] = up.weight_file
        return out

    def leave_frozen_parts_out(self) -> None:
        """From now on ``state_dict()`` leaves out the :meth:`restorable_parts`, and a state dict
        without them loads strictly (they keep the values of their files or seed)."""
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_pre_hook(_fill_frozen)

    def get_extra_state(self) -> torch.Tensor:
        return encode_record(self.training_record())

    def set_extra_state(self, state: Any) -> None:
        """Checked in :meth:`_load_from_state_dict`, which sees the whole state dict."""

    def check_state(self, state_dict: Dict[str, Any], prefix: str = "") -> None:
        """Refuse (or warn about) ``state_dict`` (this module's keys under ``prefix``) if it is not a
        checkpoint of this module. Frozen tensors it holds must equal the model's (loading them
        changes nothing); under a partial load, those that differ are dropped from ``state_dict``."""
        parts = self.restorable_parts()
        restorable = tuple(f"{prefix}{name}." for name in parts)
        carried = [k for k in state_dict if k.startswith(restorable)]
        # the featurizer's own state: the adapters' state_dict() leaves the frozen parts out
        own = self.featurizer.state_dict(prefix=prefix + "featurizer.", keep_vars=True) if carried else {}
        differ = [k for k in carried if k not in own or not _same_tensor(state_dict[k], own[k])]
        problems = []
        if prefix + RECORD_KEY not in state_dict:
            problems.append(f"it holds no training record of {self.config_key} ({prefix + RECORD_KEY}): it was "
                            f"not written for a model of this package, or is a part of one")
        else:
            problems += record_problems(decode_record(state_dict[prefix + RECORD_KEY]), self.training_record(),
                                        dinov3_carried=any(k.startswith(prefix + "featurizer.backbone.")
                                                           for k in carried) and not differ)
        if differ:
            problems.append(f"it holds {len(differ)} tensors of the frozen parts that differ from this model's "
                            f"({', '.join(parts.values())}): it was trained on other frozen weights "
                            f"({differ[:3]}{' ...' if len(differ) > 3 else ''})")
        check_module_state(self, state_dict, prefix, self.config_key, problems, skip=tuple(f"{n}." for n in parts))
        for k in differ:  # a partial load asked for: the model keeps its own frozen weights
            del state_dict[k]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if not checked_elsewhere_now():
            self.check_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _frozen_keys(module: RecordsTraining, keys, prefix: str) -> List[str]:
    return [k for k in keys if k.startswith(tuple(f"{prefix}{p}." for p in module.restorable_parts()))]


def _drop_frozen(module: RecordsTraining, state_dict, prefix: str, local_metadata) -> None:
    for k in _frozen_keys(module, list(state_dict), prefix):
        del state_dict[k]


def _fill_frozen(module: RecordsTraining, state_dict, prefix: str, local_metadata, strict,
                 missing_keys, unexpected_keys, error_msgs) -> None:
    """Runs after :meth:`RecordsTraining.check_state`, which compared any frozen tensor the checkpoint holds."""
    own = module.featurizer.state_dict(prefix=prefix + "featurizer.", keep_vars=True)
    for k in _frozen_keys(module, own, prefix):
        state_dict.setdefault(k, own[k].detach())


def _same_tensor(a: Any, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())


def check_records(model: torch.nn.Module, state: Dict[str, Any]) -> None:
    """Check ``state`` against every :class:`RecordsTraining` module of ``model`` (training record,
    own keys, frozen tensors it holds): before the stock checks, since "trained with another
    upsampler" says more than the shapes."""
    for name, module in model.named_modules():
        if isinstance(module, RecordsTraining):
            module.check_state(state, f"{name}." if name else "")
