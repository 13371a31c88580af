# LiFT release + the lower scale by antialiased resize instead of a strided subsample.
_base_ = ['./lift_release.py']

model = dict(objective=dict(downscale=dict(_delete_=True, type='AntialiasedResize')))

demo = dict(label='  + antialiased scales')
