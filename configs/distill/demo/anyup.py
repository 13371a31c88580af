# The distillation demo's AnyUp (tools/demo.py, protocol in brixel_plugins/distill/demo.py):
# anyup_vits16.py's recipe (local crops against DINOv3 run on the crop, Cosine-MSE, consistency
# under photometric augmentation, downsampling term) at the demo's 4x: guidance at 96 px, the output
# on the 384 px image's 24x24 grid cut at 96 px crops (6x6 tokens each, the backbone on the crop).
# Departure for a CPU schedule of about a minute: lr 1e-3 instead of 2e-4 (see docs/recipes.md).
_base_ = ['../anyup_vits16.py']

model = dict(upsampler=dict(factor=4))
optim_wrapper = dict(optimizer=dict(lr=1e-3))

demo = dict(label='AnyUp', iters=20, batch_size=2)
