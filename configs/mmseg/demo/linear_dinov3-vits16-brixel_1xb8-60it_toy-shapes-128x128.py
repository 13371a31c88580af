# The segmentation demo's BRIXEL run (tools/demo_seg.py, brixel_plugins/mmseg/demo.py): the toy linear
# probe on DINOv3 upsampled 4x by the BRIXEL weights of the distillation demo (tools/demo.py; the
# demo sets the file of its --work-dir).
_base_ = ['../linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py']
model = dict(backbone=dict(upsampler=dict(
    _delete_=True, type='brixel', weights='work_dirs/demo/brixel/best_upsampler.safetensors')))
demo = dict(label='BRIXEL 4x')
