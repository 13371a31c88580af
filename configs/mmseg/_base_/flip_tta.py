# The test-time augmentation of every protocol here (tools/test.py --tta, tools/infer.py --tta):
# the protocol's own picture averaged over a horizontal flip. A dataset config appends it to its
# val_pipeline without the final PackSegInputs: val_pipeline[:-1] + [{{_base_.flip_tta}}]
# (mmseg's dataset bases would switch to their multi-scale protocol instead).
flip_tta = dict(type='TestTimeAug', transforms=[
    [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
     dict(type='RandomFlip', prob=1.0, direction='horizontal')],
    [dict(type='PackSegInputs')]])
