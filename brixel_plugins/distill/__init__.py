"""Self-distillation of upsamplers on a frozen DINOv3 with mmengine's Runner (tools/distill.py).

Importing this package registers everything configs name under ``default_scope='brixel_plugins'``.
"""
from . import registry  # noqa: F401  (first: the registries)
from . import data, hooks, losses, metrics, model, runner  # noqa: F401
from .data import ImageFolderDataset, ResumableSampler
from .hooks import ExportUpsamplerHook, PhiSStatsHook
from .losses import BrixelLoss, cosine_distance, edge_loss, lift_loss, spectral_loss
from .metrics import DistillMetric, fidelity, format_table, map_metrics
from .model import DistillDataPreprocessor, DistillModel
from .runner import DistillDDP, DistillLoop, DistillRunner

__all__ = ["ImageFolderDataset", "ResumableSampler", "ExportUpsamplerHook", "PhiSStatsHook", "BrixelLoss",
           "cosine_distance", "edge_loss", "lift_loss", "spectral_loss", "DistillMetric", "fidelity",
           "format_table", "map_metrics", "DistillDataPreprocessor", "DistillModel", "DistillDDP",
           "DistillLoop", "DistillRunner"]
