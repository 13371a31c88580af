# Any folder of images (recursive: jpg/jpeg/png/webp/tif). Set the folder with
#   tools/distill.py CONFIG --data-root DIR            (or --cfg-options train_dataloader.dataset.root=DIR
#                                                       val_dataloader.dataset.root=DIR)
# Optional: train_dataloader.dataset.list_file=FILE (one path per line, relative to root);
# a separate validation folder with --val-root DIR; otherwise `num_val` images (an int, or a
# fraction < 1) of the folder are held out, the same split for train and val (split_seed).
# Images arrive at `size` px (the teacher resolution). crop='center': images smaller than that on
# both sides are padded to a square, then the centred square of the short side is resized to it;
# crop='random' takes a random square of scale x the short side and a random horizontal flip; a
# release's own policy is a dict (the BRIXEL configs: dict(type='BrixelReleaseCanvas')).
data_root = 'data/distill'
num_val = 0.01
image_size = 1024

train_dataloader = dict(
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type='ResumableSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageFolderDataset', root=data_root, split='train', num_val=num_val,
                 size=image_size, crop='center'))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageFolderDataset', root=data_root, split='val', num_val=num_val,
                 size=image_size, crop='center'))
