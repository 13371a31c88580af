# LoftUp (2x) for DINOv3 vits16: a STAND-IN recipe, not the authors'. Their two stages (SA-1B
# with SAM-mask-refined pseudo-targets, then self-distillation from high-resolution crops with an
# EMA teacher) exist only on a later, "provisional, not fully tested" branch of their repository
# and are not implemented here; this trains LoftUp with LiFT's pair objective (LoftUp(224 px image,
# F(224)) vs F(448), cosine distance: LoftUp's output is LayerNorm'd, cosine ignores the scale).
# It exists so that LoftUp trains like every registered upsampler; for the authors' weights use
# tools/convert_weights.py loftup. See docs/methods.md.
#   python tools/distill.py configs/distill/loftup_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/pair_standin.py']
model = dict(upsampler=dict(type='loftup'))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
