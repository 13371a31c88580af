# AnyUp (2x) for DINOv3 vits16: a STAND-IN recipe, not the authors'. AnyUp needs no training per
# backbone: use the authors' weights (tools/convert_weights.py anyup). Their train.py (local-crop
# objective over several backbones) is not implemented here; this trains or fine-tunes AnyUp on one
# backbone with LiFT's pair objective (AnyUp(224 px image, F(224)) vs F(448), cosine distance) and
# JAFAR's optimiser, so that AnyUp trains like every registered upsampler. See docs/methods.md.
#   python tools/distill.py configs/distill/anyup_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/pair_standin.py']
model = dict(upsampler=dict(type='anyup'))
