# The toy run of linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py with AnyUp 4x in place of bilinear:
# the authors' weights (one release for every backbone, the toy's random DINOv3 too), converted for vits16 by
#   python tools/convert_weights.py anyup anyup_paper.pth checkpoints/anyup_vits16.safetensors --arch vits16
_base_ = ['./linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py']
model = dict(backbone=dict(upsampler=dict(_delete_=True, type='anyup', weights='checkpoints/anyup_vits16.safetensors')))
