"""Self-distillation of upsamplers on a frozen DINOv3 with mmengine's Runner (tools/distill.py).

Importing this package registers everything configs name under ``default_scope='brixel_plugins'``.
"""
# importing the modules registers their components (registry: the registries themselves; optim: parameter
# groups and clipping schedules; components, transforms: the recipes' building blocks)
from . import components, data, hooks, losses, metrics, model, objectives, optim, registry, runner, transforms  # noqa: F401,E501
from .data import ImageFolderDataset, ResumableSampler
from .hooks import ExportUpsamplerHook, PhiSStatsHook, SkippedImagesHook
from .metrics import DistillMetric, fidelity, format_table, map_metrics
from .model import DistillDataPreprocessor, DistillModel
from .objectives import (
    AnyUpObjective,
    BrixelObjective,
    DistillObjective,
    FeatSharpObjective,
    FeatUpObjective,
    JafarObjective,
    LiftObjective,
    LoftUpObjective,
    MultiViewObjective,
)
from .optim import WarmupClipOptimWrapper
from .runner import DistillDDP, DistillLoop, DistillRunner
from .transforms import BrixelReleaseCanvas, ShortSideCentreCrop, SquashResize

__all__ = ["ImageFolderDataset", "ResumableSampler", "ExportUpsamplerHook", "PhiSStatsHook", "SkippedImagesHook",
           "DistillObjective", "BrixelObjective", "LiftObjective", "MultiViewObjective", "FeatSharpObjective",
           "FeatUpObjective", "AnyUpObjective", "JafarObjective", "LoftUpObjective", "BrixelReleaseCanvas",
           "ShortSideCentreCrop", "SquashResize", "DistillMetric", "fidelity",
           "format_table", "map_metrics", "DistillDataPreprocessor", "DistillModel", "DistillDDP",
           "DistillLoop", "DistillRunner", "WarmupClipOptimWrapper"]
