"""Self-distillation of upsamplers on a frozen DINOv3 with mmengine's Runner (tools/distill.py).

Importing this package registers everything configs name under ``default_scope='brixel_plugins'``.
"""
from . import registry  # noqa: F401  (first: the registries)
from . import components, transforms  # noqa: F401  (the recipes' registered building blocks)
from . import data, hooks, losses, metrics, model, objectives, runner  # noqa: F401
from . import optim  # noqa: F401  (parameter groups, clipping schedules)
from .data import ImageFolderDataset, ResumableSampler
from .hooks import ExportUpsamplerHook, PhiSStatsHook, SkippedImagesHook
from .objectives import (AnyUpObjective, BrixelObjective, DistillObjective, FeatSharpObjective, FeatUpObjective,
                         LiftObjective, MultiViewObjective)
from .transforms import BrixelReleaseCanvas, ShortSideCentreCrop, SquashResize
from .metrics import DistillMetric, fidelity, format_table, map_metrics
from .model import DistillDataPreprocessor, DistillModel
from .optim import WarmupClipOptimWrapper
from .runner import DistillDDP, DistillLoop, DistillRunner

__all__ = ["ImageFolderDataset", "ResumableSampler", "ExportUpsamplerHook", "PhiSStatsHook", "SkippedImagesHook",
           "DistillObjective",
           "BrixelObjective", "LiftObjective", "MultiViewObjective", "FeatSharpObjective", "FeatUpObjective",
           "AnyUpObjective", "BrixelReleaseCanvas", "ShortSideCentreCrop", "SquashResize", "DistillMetric", "fidelity",
           "format_table", "map_metrics", "DistillDataPreprocessor", "DistillModel", "DistillDDP",
           "DistillLoop", "DistillRunner", "WarmupClipOptimWrapper"]
