# LiFT release + antialiased scales, no colour jitter, the demo's random crops (our default but
# the random start).
_base_ = ['./lift_antialias.py']

model = dict(objective=dict(colour_jitter=None))

demo = dict(label='  + crops, antialias, no jitter', train_crop='random')
