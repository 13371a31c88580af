# The segmentation demo's bilinear run (tools/demo_seg.py, brixel_plugins/mmseg/demo.py): the toy
# linear probe on DINOv3 upsampled 4x by bilinear interpolation.
_base_ = ['../linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py']
model = dict(backbone=dict(upsampler=dict(_delete_=True, type='bilinear', factor=4)))
demo = dict(label='bilinear 4x')
