# LiFT release + the start from bilinear interpolation.
_base_ = ['./lift_release.py']

model = dict(upsampler=dict(zero_start=True))

demo = dict(label='  + zero start')
