"""Distillation objectives, registered in ``MODELS`` (``objective=dict(type='BrixelObjective')``).
The contract every objective implements is in :mod:`.base`."""
from .base import DistillObjective
from .brixel import BrixelObjective
from .lift import LiftObjective
from .multiview import HomographyJitter, MultiViewObjective

__all__ = ["DistillObjective", "BrixelObjective", "LiftObjective", "MultiViewObjective", "HomographyJitter"]
