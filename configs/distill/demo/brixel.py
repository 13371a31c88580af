# The distillation demo's BRIXEL (tools/demo.py): brixel_vits16.py's recipe (scale-free L1 + edge +
# spectral, Adam, zero start) for 400 iterations of batch 2 under the demo protocol of
# brixel_plugins/distill/demo.py (DINOv3 ViT-S, 96 px in, DINOv3 at 384 px as the target: 4x;
# random crops and flips of scikit-image's photos, chelsea / coffee / rocket held out).
_base_ = ['../brixel_vits16.py']

demo = dict(label='BRIXEL', iters=400, batch_size=2)
