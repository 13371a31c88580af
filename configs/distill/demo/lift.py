# The distillation demo's LiFT (tools/demo.py, protocol in brixel_plugins/distill/demo.py): 4x as
# its 2x module applied twice, trained end to end on the one 96 -> 384 pair, from bilinear
# interpolation (zero start). Two departures from the release recipe (lift_vits16.py): the lower
# scale is the antialiased resize the evaluation (and DenseFeaturizer) feeds it, not a strided
# subsample, and the pair adds the relative L1 error to the cosine distance (cosine alone leaves
# the magnitude free, and a held-out relative L1 far worse than bilinear's).
_base_ = ['../lift_vits16.py']

model = dict(
    upsampler=dict(type='lift', factor=4, zero_start=True),
    objective=dict(scales=1, lambda_l1=1.0, downscale=dict(_delete_=True, type='AntialiasedResize')))

demo = dict(label='LiFT', iters=200, batch_size=2)
