"""The linear probe of the DINOv3 / BRIXEL evaluation protocols, as an MMSegmentation decode head."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from mmcv.cnn import build_norm_layer
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from ..files.checkpoints import check_module_state, checked_elsewhere_now


@MODELS.register_module()
class LinearProbeHead(BaseDecodeHead):
    """Dropout2d(0.1) -> BatchNorm -> 1x1 conv to the classes; logits at the feature resolution
    (the loss and inference resize them bilinearly to the labels / image).

    ``channels`` is the input width (the probe has no hidden layer); with
    ``input_transform='resize_concat'`` the selected maps are resized to the first one's size and
    concatenated. ``conv_seg`` starts from Normal(0, 0.01) with zero bias (the base class's init).
    Use ``norm_cfg=dict(type='SyncBN')`` for multi-GPU runs.

    Loading a state dict, by any loader and even with ``strict=False`` (mmengine's
    ``load_checkpoint``, mmseg's ``init_model``), refuses one whose head keys are missing or at
    other shapes (another ``num_classes`` is named as such), unless ``BRIXEL_PARTIAL_LOAD=1``.
    """

    def __init__(self, in_channels: Union[int, Sequence[int]], norm_cfg: dict = dict(type="BN"), **kwargs):
        if "channels" in kwargs:
            raise ValueError("LinearProbeHead has no hidden layer: its channels are the input's, do not set them")
        if kwargs.get("input_transform") == "multiple_select":
            raise ValueError("LinearProbeHead takes one map or 'resize_concat' of several, not 'multiple_select'")
        channels = sum(in_channels) if kwargs.get("input_transform") == "resize_concat" else in_channels
        super().__init__(in_channels, channels, norm_cfg=norm_cfg, **kwargs)
        self.bn = build_norm_layer(norm_cfg, self.channels)[1]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if not checked_elsewhere_now():
            check_module_state(self, state_dict, prefix, f"{prefix[:-1] or 'the head'}, a {type(self).__name__}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(self.bn(x))
