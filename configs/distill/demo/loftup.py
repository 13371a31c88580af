# The distillation demo's LoftUp (tools/demo.py, protocol in brixel_plugins/distill/demo.py): 4x
# (its output at 24x24, the guidance resized to it, as LoftUp does for any output size) from
# bilinear interpolation (zero start), on the demo's direct objective (cosine + relative L1
# against DINOv3 at 384 px, as LiFT's and JBU's rows) instead of the stage-1 recipe of
# loftup_vits16.py. That recipe compares in ChannelNorm space with no high-resolution teacher, which
# leaves LoftUp's LayerNorm'd output off DINOv3's scale and offset per channel; the direct objective
# trains the output itself into DINOv3's space (LoftUp's last LayerNorm is affine), so the row is
# scored as every other row is (docs/distillation.md). NAdam lr 1e-3 (the release's 1e-4 is for an
# epoch of SA-1B).
_base_ = ['../loftup_vits16.py']

model = dict(
    upsampler=dict(type='loftup', factor=4, zero_start=True),
    objective=dict(_delete_=True, type='LiftObjective', scales=1, lambda_l1=1.0))
optim_wrapper = dict(optimizer=dict(lr=1e-3))

demo = dict(label='LoftUp', iters=30, batch_size=2)
