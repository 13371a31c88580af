"""Registered building blocks of the distillation recipes (``MODELS`` / ``TRANSFORMS``, scope
``brixel_plugins``), each one idea, shared by the objectives that use it: learned uncertainty
weighting, view jitters, colour jitter, feature spaces, random projections, the CRF term,
FeatUp's learned downsampler, the backbone facet compared, how lower scales are made."""
from .colour import ColourJitter
from .crf import SampledCRFLoss
from .downsampler_featup import FeatUpAttentionDownsampler, gaussian_blur
from .facets import LastBlockKeys, LastLayerTokens
from .feature_space import ChannelNorm
from .jitter_featup import FeatUpJitter, JitterParams
from .projection import RandomProjection
from .scales import AntialiasedResize, StridedSubsample
from .uncertainty import UncertaintyWeighting

__all__ = ["ColourJitter", "SampledCRFLoss", "FeatUpAttentionDownsampler", "gaussian_blur", "ChannelNorm",
           "FeatUpJitter", "JitterParams", "RandomProjection", "UncertaintyWeighting",
           "LastBlockKeys", "LastLayerTokens", "AntialiasedResize", "StridedSubsample"]
