"""Feature maps as colours: a 3-component PCA fitted on one reference map, and labelled grids.

The basis is fitted on one reference map (the high-resolution target), and every other map
is projected onto the same three directions, so colours mean the same thing in every column.
:func:`brixel_plugins.visualize.figure.pca_figure` puts these pieces together for a set of upsamplers.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..images import denormalise


class PCABasis:
    """Top-3 right singular vectors of centred tokens; colour range from the reference's 1-99 %."""

    def __init__(self, reference: torch.Tensor, k: int = 3):
        """reference: (D, h, w) feature map."""
        tokens = reference.detach().float().flatten(1).T  # (h*w, D)
        self.mean = tokens.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(tokens - self.mean, full_matrices=False)
        self.basis = v[:k].T  # (D, k)
        # Singular vectors have arbitrary sign: fix it so pictures are reproducible.
        proj = (tokens - self.mean) @ self.basis
        sign = torch.sign(proj.gather(0, proj.abs().argmax(0, keepdim=True)))
        self.basis = self.basis * torch.where(sign == 0, torch.ones_like(sign), sign)
        proj = proj * sign
        self.lo = torch.quantile(proj, 0.01, dim=0)
        self.hi = torch.quantile(proj, 0.99, dim=0)

    def rgb(self, fmap: torch.Tensor, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """(D, h, w) -> uint8 (H, W, 3); nearest-resized to ``size`` so token blocks stay visible."""
        d, h, w = fmap.shape
        proj = (fmap.detach().float().flatten(1).T - self.mean) @ self.basis
        proj = ((proj - self.lo) / (self.hi - self.lo).clamp_min(1e-8)).clamp(0, 1)
        img = proj.T.reshape(-1, h, w)[None]
        if size is not None:
            img = F.interpolate(img, size=size, mode="nearest")
        return (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], path: Union[str, Path],
              row_labels: Optional[Sequence[str]] = None, cell: int = 256) -> Path:
    """Save a grid of same-size-per-cell uint8 RGB images with column labels as a PNG."""
    from PIL import Image, ImageDraw

    pad, top = 4, 22
    left = 0 if row_labels is None else 110
    n_rows, n_cols = len(rows), len(labels)
    canvas = Image.new("RGB", (left + n_cols * (cell + pad) + pad, top + n_rows * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((left + pad + c * (cell + pad), 5), str(label), fill="black")
    for r, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"row {r} has {len(row)} images for {n_cols} labels")
        if row_labels is not None:
            draw.text((5, top + r * (cell + pad) + cell // 2), str(row_labels[r]), fill="black")
        for c, img in enumerate(row):
            tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (left + pad + c * (cell + pad), top + pad + r * (cell + pad)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def pca_row(reference: torch.Tensor, maps: Sequence[torch.Tensor], image: Optional[torch.Tensor] = None,
            size: Tuple[int, int] = (256, 256)) -> List[np.ndarray]:
    """One grid row: [image], then every (D,h,w) map projected on ``reference``'s PCA basis."""
    from PIL import Image

    basis = PCABasis(reference)
    row = [] if image is None else [np.asarray(Image.fromarray(denormalise(image)).resize(size[::-1]))]
    return row + [basis.rgb(m, size) for m in maps]
