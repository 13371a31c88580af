"""Detector checkpoints without the frozen backbone, written atomically, resumed from the newest good one."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils import atomic_path
from .backbone import DINOv3Backbone

logger = logging.getLogger(__name__)

LAST = "last_checkpoint"


class FrozenBackboneCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for detectors over :class:`DINOv3Backbone`.

    - Frozen parts that load from their own files (the DINOv3 weights; a frozen upsampler's
      export) are not written into checkpoints: the config rebuilds them from those files, and
      the checkpoint records which files they were (a mismatch at load is logged). A 300M-param
      ViT-L is thus not copied into every checkpoint. Random-init frozen parts are kept, since
      nothing else could restore them.
    - Checkpoints and the ``last_checkpoint`` tag are written to a temporary file, flushed to
      disk and renamed into place: a crash mid-write leaves the previous files intact.
    - ``resume_or_load(..., resume=True)`` tries the tagged checkpoint, then every other
      ``*.pth`` in the directory, newest first, and resumes from the first that loads.
    """

    def external_weights(self) -> Dict[str, str]:
        """``{state-dict prefix (ending in '.'): file}`` of the parts left out of checkpoints."""
        out = {}
        for name, module in self.model.named_modules():
            if isinstance(module, DINOv3Backbone):
                for sub, path in module.external_weights().items():
                    out[f"{name}.{sub}." if name else f"{sub}."] = path
        return out

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        external = self.external_weights()
        skip = tuple(external)
        data = {"model": {k: v for k, v in self.model.state_dict().items() if not k.startswith(skip)},
                "external_weights": {prefix[:-1]: path for prefix, path in external.items()}}
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
        with atomic_path(os.path.join(self.save_dir, LAST)) as tmp:
            tmp.write_text(last_filename_basename)

    def _load_model(self, checkpoint: Dict[str, Any]):
        recorded = checkpoint.pop("external_weights", {})
        incompatible = super()._load_model(checkpoint)
        external = self.external_weights()
        for prefix, path in recorded.items():
            now = external.get(prefix + ".")
            if now is None:
                logger.warning("the checkpoint's %s came from %s, which this model does not load; those "
                               "weights are not in the checkpoint", prefix, path)
            elif os.path.abspath(now) != os.path.abspath(path):
                logger.warning("the checkpoint was trained with %s from %s; this model loads it from %s",
                               prefix, path, now)
        skip = tuple(external)
        return incompatible._replace(missing_keys=[k for k in incompatible.missing_keys if not k.startswith(skip)])

    # -- resuming ----------------------------------------------------------------------------
    def resume_candidates(self) -> List[str]:
        """Checkpoints in ``save_dir`` to resume from, best first: the tagged one, then the
        other ``*.pth`` files, newest first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        files = sorted((os.path.join(self.save_dir, f) for f in os.listdir(self.save_dir) if f.endswith(".pth")),
                       key=os.path.getmtime, reverse=True)
        tagged = self.get_checkpoint_file() if super().has_checkpoint() else ""
        return ([tagged] if tagged in files else []) + [f for f in files if f != tagged]

    def has_checkpoint(self) -> bool:
        return bool(self.resume_candidates())

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest loadable checkpoint in ``save_dir`` (``resume=True`` and one
        exists), else load the model weights of ``path`` (may be empty: start from the config)."""
        candidates = self.resume_candidates() if resume else []
        if not candidates:
            return self.load(path, checkpointables=[])
        failures = []
        for f in candidates:
            try:
                return self.load(f)
            except Exception as e:  # unreadable or not ours: fall back to the next newest
                self._parsed_url_during_load = None  # DetectionCheckpointer.load resets it only on success
                logger.warning("cannot resume from %s (%s: %s); trying an older checkpoint", f, type(e).__name__, e)
                failures.append(f"{os.path.basename(f)}: {type(e).__name__}: {e}")
        raise RuntimeError(f"resume: no checkpoint in {self.save_dir} could be loaded ("
                           + "; ".join(failures) + "). Delete or move them, or train without --resume.")
