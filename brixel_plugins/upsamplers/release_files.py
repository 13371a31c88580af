"""Reading the authors' training checkpoints, which hold more than tensors, without building what
else they hold: torch's ``weights_only`` loader refuses such a file outright (JAFAR's released
``.pth`` files carry their hydra config), and a plain ``torch.load`` would import and build anything
the file names (a pickle can run code). Here every global outside what tensors need becomes an
inert stand-in (:class:`_NotRead`), so the weights are read and nothing else is constructed."""
from __future__ import annotations

import os
import pickle
import types
from pathlib import Path
from typing import Any, Dict

import torch

from ..backbones.weights import WeightFileError, read_state_dict


class _NotRead:
    """Stands in for every object of an authors' file that is neither a tensor nor plain data (the
    hydra ``DictConfig`` JAFAR's training script saves beside the weights): nothing of it is
    imported or built, whatever it holds is dropped."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


# what torch.save writes for tensors and plain containers; every other global becomes _NotRead
_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                   ("collections", "OrderedDict")}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _TENSOR_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                   torch.dtype)):
            return super().find_class(module, name)
        return _NotRead


_TENSORS_ONLY = types.ModuleType("tensors_only_pickle")
_TENSORS_ONLY.Unpickler = _TensorsOnlyUnpickler
_TENSORS_ONLY.load = lambda f, **kw: _TensorsOnlyUnpickler(f, **kw).load()


def read_release_file(path: os.PathLike | str) -> Dict[str, Any]:
    """An authors' ``.pth`` as data: tensors and plain Python values are read, every other object
    (JAFAR's and LoftUp's training scripts save their hydra config, an omegaconf ``DictConfig``, with
    the weights) is replaced by an inert stand-in without importing or building it. A
    ``.safetensors`` file is read as a flat state dict. Unreadable files raise :class:`WeightFileError`."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file() or path.stat().st_size == 0:
        return read_state_dict(path)  # its clear errors for missing and empty files
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_TENSORS_ONLY)
    except Exception as e:  # torch raises several types for bad bytes
        first = (str(e).strip().splitlines() or ["(no message)"])[0][:200]
        raise WeightFileError(f"could not read {path} ({path.stat().st_size} bytes): {type(e).__name__}: {first}. "
                              f"The file is truncated or corrupt (or not a weight file).") from e
    if not isinstance(data, dict):
        raise WeightFileError(f"{path} does not hold a dict (found {type(data).__name__})")
    return data
