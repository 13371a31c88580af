"""Pictures of dense features: the PCA projection and grids (``pca``) and the comparison figure of
several upsamplers on a few photos (``figure``, ``tools/visualize.py``)."""
