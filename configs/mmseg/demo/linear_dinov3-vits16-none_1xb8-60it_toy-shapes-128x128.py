# The segmentation demo's first run (tools/demo_seg.py, brixel_plugins/mmseg/demo.py): the toy linear
# probe on DINOv3's stride-16 map, no upsampler.
_base_ = ['../linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py']
model = dict(backbone=dict(upsampler=None))
demo = dict(label='none (stride 16)')
