# The distillation demo's JBU (tools/demo.py, protocol in brixel_plugins/distill/demo.py): two 2x
# layers (4x) from bilinear interpolation (zero start), on the demo's direct objective (cosine +
# relative L1 against DINOv3 at 384 px, as LiFT's) instead of FeatUp's multi-view recipe
# (jbu_vits16.py): FeatUp compares in ChannelNorm space, which leaves each pixel's magnitude free,
# and in this short schedule that recipe ended BELOW bilinear on relative L1 and fidelity
# (0.596 / 1.13 vs 0.568 / 1.19), while the direct objective beats bilinear on all three columns
# (measured: docs/recipes.md).
_base_ = ['../jbu_vits16.py']

model = dict(
    upsampler=dict(type='jbu', factor=4, zero_start=True),
    objective=dict(_delete_=True, type='LiftObjective', scales=1, lambda_l1=1.0))

demo = dict(label='JBU', iters=200, batch_size=2)
