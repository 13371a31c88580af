# The distillation demo's LoftUp (tools/demo.py, protocol in brixel_plugins/distill/demo.py): the
# stage-1 objective of loftup_vits16.py (multi-view reconstruction, TV, the superpixel-refined
# bicubic pseudo-target; no high-resolution teacher) on the demo's 96 px student, its output at 4x
# (24x24, the guidance resized to it, as LoftUp does for any output size). Departures: factor 4
# (the demo's ratio) from bilinear interpolation (zero start), 16 superpixels (a 24x24 map), NAdam
# lr 1e-3 (the release's 1e-4 is for an epoch of SA-1B). LoftUp's output is LayerNorm'd, not in
# DINOv3's space: the held-out columns score it through LoftUpObjective.readout, a per-channel affine
# map fitted on the training steps only (docs/distillation.md).
_base_ = ['../loftup_vits16.py']

model = dict(
    upsampler=dict(type='loftup', factor=4, zero_start=True),
    objective=dict(superpixels=16))
optim_wrapper = dict(optimizer=dict(lr=1e-3))

demo = dict(label='LoftUp', iters=40, batch_size=2)
