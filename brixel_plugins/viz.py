"""Old name of :mod:`brixel_plugins.pca` (kept until tools/demo.py calls ``pca_figure``)."""
from .pca import PCABasis, pca_row, save_grid  # noqa: F401
