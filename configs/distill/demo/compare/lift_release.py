# tools/compare_recipes.py: LiFT's release recipe (lift_vits16.py) at 4x as the demo runs it (its 2x
# module twice, one scale pair), under the demo protocol (brixel_plugins/distill/demo.py). The
# variants below each change one thing on the way to our default (lift_ours.py).
_base_ = ['../../lift_vits16.py']

model = dict(upsampler=dict(factor=4), objective=dict(scales=1))

demo = dict(label='LiFT release', iters=300, batch_size=2, train_crop=dict(type='SquashResize'))
