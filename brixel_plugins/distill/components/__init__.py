"""Registered building blocks of the distillation recipes (``MODELS`` / ``TRANSFORMS``, scope
``brixel_plugins``), each one idea, shared by the objectives that use it: learned uncertainty
weighting, view jitters, colour jitter, feature spaces, random projections, the CRF term, the
learned downsampler of FeatUp's recipe."""
from .uncertainty import UncertaintyWeighting

__all__ = ["UncertaintyWeighting"]
