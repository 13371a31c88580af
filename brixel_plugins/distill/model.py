"""DistillModel: the frozen DINOv3 (teacher, and the student's backbone), the trainable
upsampler, and a registered objective, as an mmengine BaseModel.

The objective (``objective=dict(type='BrixelObjective' | 'LiftObjective' | 'MultiViewObjective',
...)``, see :mod:`brixel_plugins.distill.objectives`) decides what a training step compares; it
reaches the networks only through :meth:`DistillModel.last_layer_map`, :meth:`DistillModel.target`
and :meth:`DistillModel.student`.

Validation (``mode='predict'``) always compares the upsampler at ``student_size`` with the
backbone run at ``student_size * factor`` (the high-resolution teacher), beside bilinear
enlargement of the student's last layer, both scored by the objective's ``val_loss``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from ..backbones.dinov3 import FrozenDINOv3
from ..images import normalise, resize
from ..upsamplers import Upsampler, build_upsampler
from .metrics import map_metrics
from .objectives import DistillObjective
from .registry import MODELS


def run_upsampler(backbone: FrozenDINOv3, upsampler: Upsampler, image: torch.Tensor,
                  image_hr: Optional[torch.Tensor] = None, last: Optional[torch.Tensor] = None,
                  output_size: Optional[Tuple[int, int]] = None):
    """(the upsampler's map of ``image``, the backbone's last layer of ``image`` if it was
    computed, else None): the backbone runs (without gradient) for the layers the upsampler reads,
    except the last layer when ``last`` holds it already; ``output_size`` as ``Upsampler.forward``'s."""
    last_i = backbone.depth - 1
    known = {} if last is None else {last_i: last}
    wanted = sorted(set(upsampler.layer_indices) - set(known))
    with torch.no_grad():
        layers = {**known, **(backbone.layers(image, wanted) if wanted else {})}
    return upsampler(image, layers, backbone, image_hr=image_hr, output_size=output_size), layers.get(last_i)


@torch.no_grad()
def held_out_maps(backbone: FrozenDINOv3, upsampler: Upsampler, image: torch.Tensor,
                  student_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What validation scores (:func:`~brixel_plugins.distill.metrics.map_metrics`, the objective's
    ``val_loss``): the upsampler's map of ``image`` at ``student_size`` (with the image at the
    teacher size as ``image_hr``), the bilinear enlargement of the backbone's last layer at
    ``student_size``, and the teacher, the backbone at ``student_size * factor``; all float32
    (B, D, f*h, f*w)."""
    hr = resize(image, student_size * upsampler.factor)
    low_image = resize(image, student_size)
    target = backbone.last_layer_map(hr)
    pred, low = run_upsampler(backbone, upsampler, low_image, image_hr=hr)
    if low is None:
        low = backbone.last_layer_map(low_image)
    base = F.interpolate(low.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    return pred.float(), base, target


@MODELS.register_module()
class DistillModel(BaseModel):
    """Args:
        backbone: FrozenDINOv3 kwargs (``arch``, ``weights``, ``autocast``; ``depth``... for tests).
        upsampler: upsampler config, e.g. ``dict(type='brixel', zero_start=True)``.
        objective: objective config, e.g. ``dict(type='BrixelObjective')``; built from ``MODELS``
            with the backbone's ``embed_dim`` and the upsampler's ``factor``.
        teacher_size: the size training images arrive at (square).
        student_size: the student's input size; validation compares with the backbone at
            ``student_size * factor``.
    """

    def __init__(self, backbone: dict, upsampler: dict, objective: dict, teacher_size: int,
                 student_size: int, data_preprocessor: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor or DistillDataPreprocessor(), init_cfg=init_cfg)
        self.backbone = FrozenDINOv3(**backbone)
        self.upsampler: Upsampler = build_upsampler(upsampler, self.backbone.spec)
        self.method = self.upsampler.method
        self.teacher_size, self.student_size = int(teacher_size), int(student_size)
        for s in (self.teacher_size, self.student_size):
            if s % 16:
                raise ValueError(f"image sizes must be multiples of 16, got {s}")
        self.objective_cfg = dict(objective)
        self.objective: DistillObjective = MODELS.build(
            objective, default_args=dict(embed_dim=self.backbone.embed_dim, factor=self.upsampler.factor))
        if not isinstance(self.objective, DistillObjective):
            raise TypeError(f"objective {objective.get('type')!r} built a {type(self.objective).__name__}, "
                            f"not a DistillObjective")
        self.objective.check_sizes(self.teacher_size, self.student_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.train(False)  # frozen: no training behaviour, ever
        return self

    # -- what objectives call ----------------------------------------------------------------
    @torch.no_grad()
    def last_layer_map(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's last-layer map of ``image``: (B, D, H/16, W/16)."""
        return self.backbone.last_layer_map(image)

    def target(self, image: torch.Tensor, feats: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The teacher map the upsampler's output is compared with:
        ``upsampler.target_transform(last_layer_map(image))`` (``feats``: that map, if known)."""
        return self.upsampler.target_transform(self.last_layer_map(image) if feats is None else feats)

    def student(self, image: torch.Tensor, image_hr: Optional[torch.Tensor] = None,
                last: Optional[torch.Tensor] = None, output_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The upsampler's map of ``image`` (B, 3, H, W) -> (B, D, f*H/16, f*W/16); ``image_hr``
        is the same picture at a higher resolution (for methods that read real pixels);
        ``last`` the backbone's last layer of ``image`` if already computed (not recomputed);
        ``output_size`` another output grid (methods with ``any_output_size`` only)."""
        return run_upsampler(self.backbone, self.upsampler, image, image_hr, last, output_size)[0]

    # -- calibration (statistics fitted from data before training) ---------------------------
    def calibration_targets(self) -> List[nn.Module]:
        """The modules that still need statistics fitted from the backbone's last-layer maps
        of training images at ``student_size`` (``calibrate(feats)`` on each batch, then
        ``finish_calibration()``): the upsampler and the objective, if not calibrated."""
        return [m for m in (self.upsampler, self.objective) if not m.calibrated]

    # -- mmengine entry point ----------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, index=None, mode: str = "loss"):
        img = normalise(inputs) if inputs.dtype == torch.uint8 else inputs
        if mode == "loss":
            return self.objective.losses(self, img)
        if mode in ("predict", "tensor"):
            return self._predict(img)
        raise ValueError(f"unknown mode {mode!r}")

    @torch.no_grad()
    def _predict(self, img: torch.Tensor) -> List[dict]:
        pred, base, target = held_out_maps(self.backbone, self.upsampler, img, self.student_size)
        out = []
        for i in range(img.shape[0]):
            p, t, q = pred[i:i + 1], target[i:i + 1], base[i:i + 1]
            out.append(dict(loss=float(self.objective.val_loss(p, t)), upsampler=map_metrics(p, t),
                            bilinear=map_metrics(q, t), bilinear_loss=float(self.objective.val_loss(q, t))))
        return out


@MODELS.register_module()
class DistillDataPreprocessor(BaseDataPreprocessor):
    """Moves the uint8 batch to the model's device as ``inputs``; normalisation happens on the
    device (in the model), so 4x fewer bytes travel."""

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        return {"inputs": data["image"]}
