"""The objective interface: what every distillation objective implements.

An objective is a registered component (``MODELS``, scope ``brixel_plugins``), built by
:class:`~brixel_plugins.distill.model.DistillModel` from the config's ``model.objective``, the
way mmseg builds its losses::

    objective=dict(type='BrixelObjective', lambda_edge=1.0, lambda_spectral=0.1)

with ``embed_dim`` (the backbone's D) and ``factor`` (the upsampler's) added as default
arguments. One class per objective; each owns the pieces only it needs (a PCA, a learned
downsampler, PHI-S statistics, an uncertainty net) as attributes or registered sub-components
built from its own config (``jitter=dict(type=...)``, ``downsampler=dict(type=...)``), so that
the model never dispatches on a name and never looks inside the upsampler.

The contract (shapes: B images, D channels, h x w = token grid of the student image):

``losses(distiller, image) -> {name: scalar}``
    One training step. ``image`` (B, 3, T, T) is the ImageNet-normalised batch at the
    dataloader's size ``distiller.teacher_size``. The objective resizes what it needs and runs
    the networks only through the distiller:

    - ``distiller.last_layer_map(x)``: the frozen backbone's last-layer map of ``x`` (no gradient).
    - ``distiller.target(x)``: ``upsampler.target_transform(last_layer_map(x))``, the teacher map in
      the space the upsampler's output is compared in (identity except for methods that learn
      a correction of the teacher, e.g. FeatSharp's de-bias buffer).
    - ``distiller.student(x, image_hr=None, last=None)``: the upsampler's output for ``x``
      (B, D, f*h, f*w), running the backbone (without gradient) for the layers it reads;
      ``last``: the backbone's last layer of ``x`` when the objective has it already (not
      recomputed). ``image_hr`` is the same picture at a higher resolution (methods with
      ``uses_image_hr`` take their pixels from it): objectives pass the teacher-resolution
      image, which is what the user's full-resolution picture is at inference.

    Keys starting with ``loss`` are summed by mmengine into the loss that trains; return the
    weighted terms so the log shows each one's share.

``val_loss(pred, target) -> scalar``
    The validation loss that picks the best checkpoint, for ONE held-out image:
    ``pred`` (1, D, f*h, f*w) is the student's map (or, for the bilinear row of the table, the
    student's last layer bilinearly enlarged), ``target`` (1, D, f*h, f*w) the backbone run on
    the image at ``factor`` x the student resolution. The same function scores both rows, so
    "val loss" is comparable between the upsampler and bilinear. It must not depend on
    randomness (no jitters, no dropout) and must not train anything.

``check_sizes(teacher_size, student_size)``
    Raise ``ValueError`` (saying what is wrong) for resolutions the objective cannot use.

Statistics fitted before training (the calibration protocol, the same as the upsampler's:
:class:`~brixel_plugins.upsamplers.layers.calibration.Calibration`, nothing to fit by default):
``calibrated`` (property), ``calibrate(feats)`` (accumulate from last-layer maps (B, D, h, w)
of training images at the student resolution), ``finish_calibration()`` (fit; every process
calls it, and statistics are summed over processes when ``torch.distributed`` is initialised,
so every rank fits the same transform). ``PhiSStatsHook`` streams the features once and feeds
every module in ``DistillModel.calibration_targets()`` (the upsampler and the objective, those
not yet calibrated, so a resumed checkpoint that holds fitted statistics skips the pass).

Recipes the objectives are written to carry (exact values in ``docs/recipes.md``):

- ``BrixelObjective``: L1 + edge + spectral against the teacher at ``factor`` x the student
  resolution; the scale-free default and ``release=True`` (the authors' formula).
- ``LiftObjective``: LiFT's multi-scale cosine; release options (targets, colour jitter,
  strided scales) are constructor options of this class.
- ``MultiViewObjective``: multi-view consistency (homography views, a learned attention
  downsampler, PHI-S space); ``FeatSharpObjective`` is its subclass with FeatSharp's release
  pieces (shared zoom and jitters with validity masks, seam weights on tile borders, a learned
  uncertainty ``exp(-s) * mse + s / 2``).
- ``AnyUpObjective``: AnyUp's local crops (the output cut at a crop against the backbone run on
  the crop), Cosine-MSE, a consistency term under photometric augmentation, a downsampling term.
- ``JafarObjective``: JAFAR's recipe without a high-resolution teacher (the backbone's own map of
  the training image as the target, the input downscaled 2x to 4x, Cosine_MSE + consistency).
- ``LoftUpObjective``: LoftUp's stage 1 (multi-view reconstruction, TV, a superpixel-refined
  bicubic pseudo-target; stage 2 is refused).
- ``FeatUpObjective``: FeatUp's JBU recipe (its jitter, ChannelNorm space, random 30-d
  projections, learned uncertainty, CRF term). The pieces the recipes share are one
  registered component each in :mod:`brixel_plugins.distill.components`. Anything such a
  component trains (uncertainty net, downsampler) is a submodule of the objective, so the
  optimizer sees it (``DistillOptimWrapperConstructor`` takes every trainable
  parameter outside the backbone) and checkpoints hold it; what the upsampler exports stays
  the upsampler alone.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ...upsamplers.layers.calibration import Calibration


class DistillObjective(nn.Module, Calibration):
    """Base class of the objectives (see the module docstring for the contract).

    Args:
        embed_dim: the backbone's channel count D (set by DistillModel).
        factor: the upsampler's factor f (set by DistillModel).
    """

    def __init__(self, embed_dim: int, factor: int):
        super().__init__()
        self.embed_dim, self.factor = int(embed_dim), int(factor)

    def losses(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, distiller, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.losses(distiller, image)

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_sizes(self, teacher_size: int, student_size: int) -> None:
        """Training images arrive at ``teacher_size``; validation compares the student at
        ``student_size`` with the backbone at ``student_size * factor``."""
        if teacher_size < student_size * self.factor:
            raise ValueError(f"{type(self).__name__}: teacher_size ({teacher_size}) must be at least "
                             f"student_size ({student_size}) x the upsampler factor ({self.factor}): "
                             f"validation compares with the backbone at {student_size * self.factor} px")
