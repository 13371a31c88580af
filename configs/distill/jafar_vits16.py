# JAFAR (2x) for DINOv3 vits16: a STAND-IN recipe, not the authors'. Their train.py (448 px
# ImageNet, the input downscaled by U(0.25, 0.5), guidance at 224, Cosine + MSE plus a 0.1
# consistency term, AdamW 2e-4, batch 4, 100k steps) is not implemented here; this trains JAFAR
# with LiFT's pair objective (JAFAR(224 px image, F(224)) vs F(448), cosine distance) and their
# optimiser. It exists so that JAFAR trains like every registered upsampler; for the authors'
# weights use tools/convert_weights.py jafar. See docs/methods.md.
#   python tools/distill.py configs/distill/jafar_vits16.py --data-root DIR --weights FILE
_base_ = ['./_base_/methods/pair_standin.py']
model = dict(upsampler=dict(type='jafar'))
