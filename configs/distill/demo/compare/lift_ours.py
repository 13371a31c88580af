# LiFT with our defaults where they depart from the release: antialiased scales, no colour jitter,
# random crops, zero start.
_base_ = ['./lift_ours_random_init.py']

model = dict(upsampler=dict(zero_start=True))

demo = dict(label='LiFT ours')
