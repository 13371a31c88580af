# The embedded default: linear probe on DINOv3 ViT-S/16 + bilinear 4x, on the toy shapes
# (written to data/toy_shapes on first use; 64 training / 16 validation images, 128 px), 60
# iterations of batch 8 on CPU. DINOv3 is a random init unless model.backbone.weights names a file:
# drawn from init_seed, so training, tools/test.py and tools/infer.py run the same backbone (the
# checkpoint records the seed and refuses a model that draws another). randomness seeds the run.
# tools/demo_seg.py runs it with bilinear and with the BRIXEL weights of the distillation demo.
_base_ = ['../_base_/models/dinov3_linear.py', '../_base_/datasets/toy_shapes.py',
          '../_base_/default_runtime.py']
model = dict(backbone=dict(init_seed=0), decode_head=dict(num_classes=5))
randomness = dict(seed=0)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.01),
    constructor='TrainableOptimWrapperConstructor')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=60, val_interval=60)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=60))
