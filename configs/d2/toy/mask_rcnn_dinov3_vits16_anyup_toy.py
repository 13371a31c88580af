from ..common.toy import dataloader, lr_multiplier, model, optimizer, train, use_toy_backbone  # noqa: F401

# the authors' AnyUp weights (one release for every backbone, the toy's random DINOv3 too), converted for vits16 by
#   python tools/convert_weights.py anyup anyup_paper.pth checkpoints/anyup_vits16.safetensors --arch vits16
use_toy_backbone(model, train, upsampler="anyup", upsampler_weights="checkpoints/anyup_vits16.safetensors")
