"""Registered building blocks of the distillation recipes (``MODELS`` / ``TRANSFORMS``, scope
``brixel_plugins``), each one idea, shared by the objectives that use it: learned uncertainty
weighting, view jitters (one interface: homography views, ours and FeatSharp's, and FeatUp's
jitter), colour jitter, feature spaces, random projections, the CRF term, the learned attention
downsampler, the backbone facet compared, how lower scales are made. Importing this package registers every one of them
(``brixel_plugins.distill`` imports it before anything that builds them)."""
from .attention_downsampler import FEATSHARP, FEATUP, AttentionDownsampler
from .colour import ColourJitter
from .crf import SampledCRFLoss
from .facets import LastBlockKeys, LastLayerTokens
from .feature_space import ChannelNorm
from .homography import FeatSharpJitter, HomographyJitter, HomographyViews, homography_grid, random_homographies, warp
from .jitter import FeatUpJitter, JitterParams, ViewJitter
from .photometric import PhotometricAugment
from .projection import RandomProjection
from .scales import AntialiasedResize, StridedSubsample
from .uncertainty import UncertaintyWeighting

__all__ = ["ColourJitter", "SampledCRFLoss", "AttentionDownsampler", "FEATSHARP", "FEATUP", "ChannelNorm",
           "FeatSharpJitter", "HomographyJitter", "HomographyViews", "homography_grid", "random_homographies", "warp",
           "FeatUpJitter", "JitterParams", "PhotometricAugment", "ViewJitter", "RandomProjection",
           "UncertaintyWeighting",
           "LastBlockKeys", "LastLayerTokens", "AntialiasedResize", "StridedSubsample"]
