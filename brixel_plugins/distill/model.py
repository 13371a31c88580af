"""DistillModel: frozen DINOv3 teacher/student + the trainable upsampler, as an mmengine BaseModel.

Objectives (``objective=dict(type=...)``):

- ``brixel``: teacher = last layer at ``teacher_size``; student = upsampler on the bicubic
  (antialiased) downsample to ``student_size`` = teacher_size / factor; BrixelLoss.
- ``lift``: LiFT's multi-scale cosine: up(x/2) vs F(x), up(x/4) vs F(x/2), ... (``scales`` pairs).
- ``multiview``: FeatUp/FeatSharp multi-view consistency at ``student_size``: upsample once,
  warp by random jitters, learned attention downsampler, MSE against the backbone's features of
  the jittered views (optionally in PHI-S-normalised space, fitted by PhiSStatsHook).

Validation (``mode='predict'``) always compares the upsampler at ``student_size`` with the
backbone run at ``student_size * factor`` (the high-resolution teacher), beside bilinear.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel
from torch import nn

from ..backbones.dinov3 import FrozenDINOv3
from ..featurizer import backbone_layers
from ..images import normalise, resize
from ..ops.attention_downsampler import AttentionDownsampler
from ..ops.phi_s import PhiS
from ..upsamplers import Upsampler, build_upsampler
from . import losses as L
from .metrics import map_metrics
from .registry import MODELS


def build_downsampler(cfg: Optional[dict], dim: int, factor: int) -> nn.Module:
    """The learned attention downsampler of multi-view training (FeatSharp's ops module)."""
    cfg = dict(cfg or {})
    cfg.pop("type", None)
    return AttentionDownsampler(dim=dim, factor=factor, **cfg)


@MODELS.register_module()
class DistillModel(BaseModel):
    """Args:
        backbone: FrozenDINOv3 kwargs (``arch``, ``weights``, ``autocast``; ``depth``... for tests).
        upsampler: upsampler config, e.g. ``dict(type='brixel')``.
        objective: ``dict(type='brixel', lambda_edge=1.0, lambda_spectral=0.1, shift_spectrum=True)``,
            ``dict(type='lift', scales=2)`` or ``dict(type='multiview', num_jitters=5, phi_s=True,
            downsampler=dict(...), jitter=dict(max_zoom=..., ...))``.
        teacher_size, student_size: resolutions (images arrive at ``teacher_size``; for
            multiview training images arrive at ``student_size``).
    """

    def __init__(self, backbone: dict, upsampler: dict, objective: dict, teacher_size: int,
                 student_size: int, data_preprocessor: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor or DistillDataPreprocessor(), init_cfg=init_cfg)
        self.backbone = FrozenDINOv3(**backbone)
        self.upsampler: Upsampler = build_upsampler(upsampler, self.backbone.spec)
        self.method = self.upsampler.method
        self.teacher_size, self.student_size = int(teacher_size), int(student_size)
        self.objective = dict(objective)
        kind = self.objective.pop("type")
        if kind not in ("brixel", "lift", "multiview"):
            raise ValueError(f"objective type must be brixel, lift or multiview, got {kind!r}")
        self.kind = kind
        f = self.upsampler.factor
        if kind in ("brixel", "lift") and self.teacher_size != self.student_size * f:
            raise ValueError(f"{kind}: teacher_size ({teacher_size}) must be student_size ({student_size}) x "
                             f"the upsampler factor ({f})")
        for s in (self.teacher_size, self.student_size):
            if s % 16:
                raise ValueError(f"image sizes must be multiples of 16, got {s}")
        if kind == "brixel":
            self.loss_fn = L.BrixelLoss(**self.objective)
        elif kind == "lift":
            self.scales = int(self.objective.get("scales", 2))
            if self.student_size // f ** (self.scales - 1) < 16:
                raise ValueError(f"lift: {self.scales} scales below {student_size} px leave no token grid")
        else:
            self.num_jitters = int(self.objective.get("num_jitters", 5))
            self.jitter = dict(self.objective.get("jitter", {}))
            self.downsampler = build_downsampler(self.objective.get("downsampler"), self.backbone.embed_dim, f)
            # the loss compares maps in PHI-S space; FeatSharp holds a PHI-S of its own (fitted by
            # the same statistics pass), anything else gets one here
            self.use_phi_s = bool(self.objective.get("phi_s", True))
            if self.use_phi_s and not isinstance(getattr(self.upsampler, "phi_s", None), PhiS):
                self.loss_phi_s = PhiS(self.backbone.embed_dim)

    # -- helpers -----------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.train(False)  # frozen: no training behaviour, ever
        return self

    def upsample(self, img: torch.Tensor, with_last: bool = False):
        """Upsampler output at ``img``'s resolution (and the student's last layer if asked)."""
        layers = backbone_layers(self.backbone, img, [self.upsampler])
        last = self.backbone.depth - 1
        if with_last and last not in layers:
            layers = {**layers, **self.backbone.layers(img, [last])}
        out = self.upsampler(img, layers, self.backbone)
        return (out, layers.get(last)) if with_last else out

    def teacher(self, img: torch.Tensor) -> torch.Tensor:
        return self.backbone.last_layer(img)

    @property
    def phi_s(self) -> Optional[PhiS]:
        """The PHI-S the multi-view loss normalises with (None: plain feature space)."""
        if self.kind != "multiview" or not self.use_phi_s:
            return None
        own = getattr(self.upsampler, "phi_s", None)
        return own if isinstance(own, PhiS) else self.loss_phi_s

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.phi_s
        return phi(x) if phi is not None else x

    # -- objectives --------------------------------------------------------------------------
    def _brixel_losses(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        target = self.teacher(resize(img, self.teacher_size))
        pred = self.upsample(resize(img, self.student_size))
        return self.loss_fn(pred, target)

    def _lift_losses(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        f = self.upsampler.factor
        feats = {}  # each resolution runs the backbone once: F(x/2) is a target and an input

        def feat(size):
            if size not in feats:
                feats[size] = self.teacher(resize(img, size))
            return feats[size]

        out = {}
        size = self.teacher_size
        for k in range(self.scales):
            small = size // f
            lr = resize(img, small)
            pred = self.upsampler(lr, {self.backbone.depth - 1: feat(small)}, self.backbone) \
                if self.upsampler.layer_indices == (self.backbone.depth - 1,) else self.upsample(lr)
            out[f"loss_cos_{k}"] = L.cosine_distance(pred, feat(size))
            size = small
        return out

    def _multiview_losses(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        img = resize(img, self.student_size)
        hr = self._norm(self.upsample(img))
        b = img.shape[0]
        total = img.new_zeros(())
        for _ in range(self.num_jitters):
            hmat = L.random_homographies(b, **self.jitter).to(img.device)  # global RNG: seeded per iteration
            view = L.warp(img, hmat, mode="bilinear")
            with torch.no_grad():
                target = self.teacher(view)
            if hasattr(self.upsampler, "debiased"):
                target = self.upsampler.debiased(target)  # FeatSharp learns the backbone's fixed-pattern bias
            target = self._norm(target)
            pred = self.downsampler(L.warp(hr, hmat))
            total = total + L.multiview_mse(pred, target)
        return {"loss_mv": total / self.num_jitters}

    def val_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Validation loss for best-checkpoint selection, per method against the hi-res teacher."""
        if self.kind == "brixel":
            return sum(self.loss_fn(pred, target).values())
        if self.kind == "lift":
            return L.cosine_distance(pred, target)
        return L.multiview_mse(self._norm(pred), self._norm(target))

    # -- mmengine entry point ----------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, index=None, mode: str = "loss"):
        img = normalise(inputs) if inputs.dtype == torch.uint8 else inputs
        if mode == "loss":
            return getattr(self, f"_{self.kind}_losses")(img)
        if mode in ("predict", "tensor"):
            return self._predict(img)
        raise ValueError(f"unknown mode {mode!r}")

    @torch.no_grad()
    def _predict(self, img: torch.Tensor) -> List[dict]:
        s = self.student_size
        target = self.teacher(resize(img, s * self.upsampler.factor))
        pred, low = self.upsample(resize(img, s), with_last=True)
        pred = pred.float()
        base = F.interpolate(low, size=target.shape[-2:], mode="bilinear", align_corners=False)
        out = []
        for i in range(img.shape[0]):
            p, t, q = pred[i:i + 1], target[i:i + 1], base[i:i + 1]
            out.append(dict(loss=float(self.val_loss(p, t)), upsampler=map_metrics(p, t),
                            bilinear=map_metrics(q, t), bilinear_loss=float(self.val_loss(q, t))))
        return out


@MODELS.register_module()
class DistillDataPreprocessor(BaseDataPreprocessor):
    """Moves the uint8 batch to the model's device as ``inputs``; normalisation happens on the
    device (in the model), so 4x fewer bytes travel."""

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        return {"inputs": data["image"]}
