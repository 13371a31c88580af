"""brixel_plugins: frozen DINOv3 + feature upsamplers, with thin MMSeg / Detectron2 adapters."""
from .version import __version__

__all__ = ["__version__"]
