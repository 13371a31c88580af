from ..common.toy import dataloader, lr_multiplier, model, optimizer, train, use_toy_backbone  # noqa: F401

use_toy_backbone(model, train, upsampler="brixel",
                 upsampler_weights="work_dirs/demo/brixel/best_upsampler.safetensors")
