# tools/compare_recipes.py: FeatUp's JBU release recipe (jbu_vits16.py) at 4x (two 2x layers) under
# the demo protocol (brixel_plugins/distill/demo.py).
_base_ = ['../../jbu_vits16.py']

model = dict(upsampler=dict(factor=4))

demo = dict(label='JBU FeatUp release', iters=300, batch_size=2, train_crop=dict(type='ShortSideCentreCrop'))
