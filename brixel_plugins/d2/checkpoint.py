"""Detector checkpoints without the frozen backbone, written atomically, read safely, checked against
the model, resumed from the newest good one (the rules of :mod:`brixel_plugins.files.checkpoints`)."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks

from ..common.filesystem import atomic_path, remove_stale_temp_files, write_text_atomic
from ..files.checkpoints import (
    RECORD_KEY,
    CheckpointError,
    check_records,
    checked_elsewhere,
    file_being_loaded,
    load_checkpoint_file,
    refuse_or_warn,
    restricted_pickle_load,
    resume_candidates,
    resume_newest,
    state_dict_problems,
)
from .backbone import DINOv3Backbone

logger = logging.getLogger(__name__)

LAST = "last_checkpoint"
# what PeriodicCheckpointer writes: model_0004999.pth ... model_final.pth
PERIODIC_CHECKPOINT = re.compile(r"^model_(\d+|final)\.pth$")


def looks_like_dinov3(state: Dict[str, Any]) -> bool:
    """A DINOv3 weight file (Meta's or timm's layout), not a detector checkpoint."""
    return "patch_embed.proj.weight" in state and any(k.startswith("blocks.") for k in state)


class FrozenBackboneCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for detectors over :class:`DINOv3Backbone`.

    - Frozen parts that their files or DINOv3's init seed restore (the DINOv3 weights or random
      init; a frozen upsampler's export) are not in the backbone's ``state_dict()``, so not in
      checkpoints (the one rule of :class:`~brixel_plugins.files.checkpoints.RecordsTraining`);
      the checkpoint names them under ``external_weights``. A 300M-param ViT-L is thus not copied
      into every checkpoint. A frozen upsampler without a file is kept, since nothing else could
      restore it. Frozen tensors a checkpoint holds anyway (those of older versions, which kept a
      random-init DINOv3) are compared with the model's: equal, they are ignored; different, the
      checkpoint is refused.
    - Loading is checked: the backbone's training record (DINOv3 arch and file hash, upsampler
      method, config and file hash) must match the model's, and every tensor's shape and the key
      sets must agree (another ``num_classes``, another upsampler); a mismatch is an error naming
      both sides unless ``BRIXEL_PARTIAL_LOAD=1``. A DINOv3 weight file passed as a detector
      checkpoint is refused with the config key that takes it.
    - Files are read safely: ``.pth`` with torch's ``weights_only``, ``.pkl`` (Detectron2's model
      zoo) with an unpickler that builds numpy arrays and plain types only.
    - Checkpoints and the ``last_checkpoint`` tag are written to a temporary file, flushed to
      disk and renamed into place: a crash mid-write leaves the previous files intact.
    - ``resume_or_load(..., resume=True)`` tries the tagged checkpoint, then the periodic ones,
      newest first, and resumes from the first that loads.
    """

    def external_weights(self) -> Dict[str, str]:
        """``{state-dict prefix (ending in '.'): file or seed}`` of the parts left out of checkpoints."""
        out = {}
        for name, module in self.model.named_modules():
            if isinstance(module, DINOv3Backbone):
                for sub, path in module.restorable_parts().items():
                    out[f"{name}.{sub}." if name else f"{sub}."] = path
        return out

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(),  # without the frozen parts (RecordsTraining)
                "external_weights": {prefix[:-1]: path for prefix, path in self.external_weights().items()}}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        logger.info("Saving checkpoint to %s (frozen parts from their own files: %s)", path,
                    ", ".join(f"{k} <- {v}" for k, v in data["external_weights"].items()) or "none")
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_text_atomic(os.path.join(self.save_dir, LAST), last_filename_basename)

    # -- reading -----------------------------------------------------------------------------
    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            import pickle

            try:
                with self.path_manager.open(filename, "rb") as f:
                    data = restricted_pickle_load(f)
            except pickle.UnpicklingError as e:
                raise CheckpointError(f"cannot load {filename}: {e}") from e
            if not isinstance(data, dict):
                raise CheckpointError(f"{filename} holds a {type(data).__name__}, not a dict of weights")
            if "model" in data and "__author__" in data:
                return data
            data = data.get("blobs", data)
            return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            raise CheckpointError(f"{filename}: pycls .pyth checkpoints are not read here; convert the weights to a "
                                  f".pth state dict")
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        loaded = load_checkpoint_file(f)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{f} holds a {type(loaded).__name__}, not a checkpoint dict")
        state = loaded.get("model", loaded)
        if isinstance(state, dict) and looks_like_dinov3(state):
            raise CheckpointError(
                f"{f} is a DINOv3 weight file, not a detector checkpoint. DINOv3 stays frozen and loads from "
                f"model.backbone.net.weights={f}; train.init_checkpoint takes a checkpoint written by "
                f"tools/d2_train.py (or Detectron2's model zoo).")
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]):
        checkpoint.pop("external_weights", None)
        state = checkpoint["model"]
        heuristics = checkpoint.get("matching_heuristics", False)  # a model-zoo .pkl: stock parts only
        external = tuple(self.external_weights())
        if not heuristics:
            # the backbone's own check first (record, its keys, the frozen tensors a checkpoint holds),
            # then every tensor of the detector
            check_records(self.model, state)
        for k in [k for k in state if k.rsplit(".", 1)[-1] == RECORD_KEY or k.startswith(external)]:
            del state[k]  # fvcore's loader takes tensors only; frozen tensors, compared, are the model's
        if not heuristics:
            own = {k: v for k, v in self.model.state_dict().items() if not k.startswith(external)}
            problems = state_dict_problems(own, state)
            if problems:
                refuse_or_warn(problems, f"{file_being_loaded() or 'the checkpoint'} does not fit this model")
        with checked_elsewhere():
            incompatible = super()._load_model(checkpoint)
        skip = external + tuple(k for k in self.model.state_dict() if k.rsplit(".", 1)[-1] == RECORD_KEY)
        return incompatible._replace(missing_keys=[k for k in incompatible.missing_keys if not k.startswith(skip)])

    # -- resuming ----------------------------------------------------------------------------
    def resume_candidates(self) -> List[str]:
        """Checkpoints in ``save_dir`` to resume from, best first: the tagged one, then the
        periodic ones, newest step first (the rule every trainer here shares)."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        tagged = self.get_checkpoint_file() if super().has_checkpoint() else None
        return resume_candidates(self.save_dir, tagged, PERIODIC_CHECKPOINT)

    def has_checkpoint(self) -> bool:
        return bool(self.resume_candidates())

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest loadable checkpoint in ``save_dir`` (``resume=True`` and one
        exists), else load the model weights of ``path`` (may be empty: start from the config)."""
        candidates = self.resume_candidates() if resume else []
        if not candidates:
            return self.load(path, checkpointables=[])

        def load(f):
            self._parsed_url_during_load = None  # DetectionCheckpointer.load resets it only on success
            return self.load(f)

        return resume_newest(candidates, load, logger, self.save_dir)[1]


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's hook, whose ``max_to_keep`` also counts the periodic checkpoints written before a
    resume (detectron2 only remembers those of the current process, so older ones were never pruned),
    and which removes the temporary files of writes a kill interrupted, as the mmengine trainers do."""

    def before_train(self):
        super().before_train()
        folder = self.checkpointer.save_dir
        if not folder or not os.path.isdir(folder):
            return
        for path in remove_stale_temp_files(folder):
            logger.info("removed the temporary file of an interrupted write: %s", path)
        if self.max_to_keep is None:
            return
        pattern = re.compile(rf"^{re.escape(self.file_prefix)}_(\d+)\.pth$")
        found = sorted((int(m.group(1)), os.path.join(folder, n))
                       for n in os.listdir(folder) if (m := pattern.match(n)))
        self.recent_checkpoints = [p for _, p in found]
        while len(self.recent_checkpoints) > self.max_to_keep:
            old = self.recent_checkpoints.pop(0)
            logger.info("max_to_keep=%d: removing %s, written before the resume", self.max_to_keep, old)
            self.path_manager.rm(old)
