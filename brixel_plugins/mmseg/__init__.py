"""MMSegmentation components (the only module that imports mmseg), registered in mmseg's own
registries so ``default_scope='mmseg'`` configs name them after
``custom_imports = dict(imports=['brixel_plugins.mmseg'])``:

- ``DINOv3Featurizer``   backbone: frozen DINOv3 + any upsampler, tuple of maps (dense first)
- ``LinearProbeHead``    decode head of the DINOv3 / BRIXEL linear protocols
- ``ToyShapesDataset``   the toy dataset of the embedded default
- ``TrainableOptimWrapperConstructor``  the optimizer sees only what trains
- ``ResetOriShape``      score on the resized + cropped label map (BRIXEL protocol)

Importing it also registers the shared engine pieces (``SafeRunner``, ``SafeCheckpointHook``,
``NonFiniteLossHook``, ``UnsmoothedValLogProcessor``, the ``atomic_local`` file backend).
"""
from .. import engine  # noqa: F401  registers the shared runner, hooks and file backend
from .backbone import DINOv3Featurizer
from .datasets import ToyShapesDataset
from .heads import LinearProbeHead
from .optim import TrainableOptimWrapperConstructor
from .transforms import ResetOriShape

__all__ = ["DINOv3Featurizer", "LinearProbeHead", "ToyShapesDataset", "TrainableOptimWrapperConstructor",
           "ResetOriShape"]
