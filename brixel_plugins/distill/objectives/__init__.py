"""Distillation objectives, registered in ``MODELS`` (``objective=dict(type='BrixelObjective')``).
The contract every objective implements is in :mod:`.base`."""
from .base import DistillObjective
from .brixel import BrixelObjective
from .lift import LiftObjective
from .multiview import MultiViewObjective
from .featsharp import FeatSharpObjective
from .featup import FeatUpObjective
from .jafar import JafarObjective
from .loftup import LoftUpObjective

__all__ = ["DistillObjective", "BrixelObjective", "LiftObjective", "MultiViewObjective",
           "FeatSharpObjective", "FeatUpObjective", "JafarObjective",
           "LoftUpObjective"]
