# LiFT (2x) for DINOv3 vits16, the release recipe exactly: input and target are the last block's
# attention keys (heads concatenated, before RoPE, no final norm), the release's `--facet key`.
# The weights upsample KEYS: our featurizers feed upsamplers the normalised tokens, so use
# lift_vits16.py for pipelines; this config reproduces the release's training.
_base_ = ['./_base_/methods/lift.py']
model = dict(backbone=dict(arch='vits16'), objective=dict(facet=dict(_delete_=True, type='LastBlockKeys')))
