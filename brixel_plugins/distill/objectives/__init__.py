"""Distillation objectives, registered in ``MODELS`` (``objective=dict(type='BrixelObjective')``).
The contract every objective implements is in :mod:`.base`."""
from .anyup import AnyUpObjective
from .base import DistillObjective
from .brixel import BrixelObjective
from .featsharp import FeatSharpObjective
from .featup import FeatUpObjective
from .jafar import JafarObjective
from .lift import LiftObjective
from .loftup import LoftUpObjective
from .multiview import MultiViewObjective

__all__ = ["DistillObjective", "BrixelObjective", "LiftObjective", "MultiViewObjective",
           "FeatSharpObjective", "FeatUpObjective", "AnyUpObjective", "JafarObjective",
           "LoftUpObjective"]
