from ..common.dinov3_vitdet import dataloader, lr_multiplier, model, optimizer, train, use_dinov3  # noqa: F401

use_dinov3(model, arch="vitb16", upsampler="loftup")
