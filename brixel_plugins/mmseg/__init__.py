"""MMSegmentation components (the only module that imports mmseg), registered in mmseg's own
registries so ``default_scope='mmseg'`` configs name them after
``custom_imports = dict(imports=['brixel_plugins.mmseg'])``:

- ``DINOv3Featurizer``   backbone: frozen DINOv3 + any upsampler, tuple of maps (dense first)
- ``LinearProbeHead``    decode head of the DINOv3 / BRIXEL linear protocols
- ``ToyShapesDataset``   the toy dataset of the embedded default
- ``ResetOriShape``      score on the resized + cropped label map (BRIXEL protocol)
- ``CheckLabelMap``      a label map of another size than its image stops the run, naming both
- ``LabelRangeHook``     a label outside ``num_classes`` stops the run before the model sees it

Importing it also registers the shared engine pieces (``SafeRunner``, ``SafeCheckpointHook``,
``NonFiniteLossHook``, ``UnsmoothedValLogProcessor``, the ``atomic_local`` file backend,
``TrainableOptimWrapperConstructor`` (the optimizer sees only what trains), ``FrozenBackboneDDP``).
"""
from .. import engine  # noqa: F401  registers the shared runner, hooks and file backend
from ..engine import TrainableOptimWrapperConstructor  # configs name it; importable from here as before
from . import export  # noqa: F401  registers the builder of mmseg model files (files.export.load_exported_model)
from .backbone import DINOv3Featurizer
from .datasets import LabelRangeHook, ToyShapesDataset
from .heads import LinearProbeHead
from .transforms import CheckLabelMap, ResetOriShape

__all__ = ["DINOv3Featurizer", "LinearProbeHead", "ToyShapesDataset", "TrainableOptimWrapperConstructor",
           "ResetOriShape", "CheckLabelMap", "LabelRangeHook"]
