"""The learned attention downsampler of multi-view training (:mod:`brixel_plugins.distill.components.attention_downsampler`),
registered for configs: ``downsampler=dict(type='AttentionDownsampler', **FEATUP)`` (FeatUp's release) or
``**FEATSHARP`` (FeatSharp's); built with ``dim`` and ``factor`` by the objective."""
from .attention_downsampler import FEATSHARP, FEATUP, AttentionDownsampler
from ..registry import MODELS

MODELS.register_module(module=AttentionDownsampler)

__all__ = ["AttentionDownsampler", "FEATSHARP", "FEATUP"]
