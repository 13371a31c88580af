"""Segment pictures with a trained segmentor: a class map and an overlay per picture, at its size.

    python tools/infer.py CONFIG CHECKPOINT PICTURE|FOLDER|GLOB [...] --out-dir DIR
        [--device cpu|cuda] [--opacity 0.5] [--tta] [--cfg-options k=v ...]
    python tools/infer.py EXPORTED.safetensors PICTURE|FOLDER|GLOB [...] --out-dir DIR [...]

CONFIG and CHECKPOINT as for tools/test.py (the checkpoint holds what trained; DINOv3 and a frozen
upsampler load from the files the config names), or the one file tools/export_model.py writes
(model, pipelines and class names; DINOv3 found by its recorded name and sha256). For every
picture (any size, any number of them; folders are searched recursively) it writes

    DIR/maps/<name>.png       class ids as a paletted PNG in the dataset's colours, picture-sized
    DIR/overlays/<name>.png   the map over the picture, with a legend of the classes present

through mmseg's own ``init_model`` / ``inference_model`` with the config's ``test_pipeline``
(whole picture; sliding window if the config's ``model.test_cfg`` says so). ``--tta`` averages
the config's ``tta_pipeline`` where it predicts whole pictures, and refuses otherwise (the
256 px protocol configs' test-time augmentation scores their centre crop: tools/test.py --tta).

Every file is written atomically (an interrupted run leaves no partial file under a final name).
A picture that cannot be read (or runs out of GPU memory) is listed and skipped: every other
picture is done, then the tool ends with exit status 1 and the list of failures. Folders and
globs never find pictures in DIR/maps and DIR/overlays (DIR may lie inside an input folder, or
be it). A config whose test_pipeline has no resize predicts at full size: for a picture over 1
megapixel a warning says so once, with how to add a resize.
"""
from __future__ import annotations

import argparse
import os.path as osp

from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description="Class maps and overlays for pictures, from a config and a checkpoint")
    p.add_argument("paths", nargs="+", metavar="CONFIG CHECKPOINT | EXPORTED.safetensors, then PICTURE",
                   help="the config and the checkpoint of tools/train.py (or mmseg's train.py), or one file of "
                        "tools/export_model.py; then picture files, folders (recursive) or glob patterns")
    p.add_argument("--out-dir", required=True, help="where maps/ and overlays/ go")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--opacity", type=float, default=0.5, help="of the class colours in the overlays (0-1]")
    p.add_argument("--tta", action="store_true", help="average the config's test-time augmentations")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                   help="override config entries, e.g. model.backbone.weights=FILE")
    args = p.parse_args(argv)
    exported = args.paths[0].endswith(".safetensors")
    args.config, args.checkpoint = (args.paths[0], None) if exported else (args.paths + [None])[:2]
    args.inputs = args.paths[1 if exported else 2:]
    if not args.inputs:
        p.error("no pictures: give CONFIG CHECKPOINT (or EXPORTED.safetensors), then pictures, folders or globs")
    if not 0 < args.opacity <= 1:
        p.error(f"--opacity must be in (0, 1], got {args.opacity}")
    return args


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.cli.pictures import picture_paths
    from brixel_plugins.mmseg.inference import load_segmentor, segment_pictures

    # outputs never become inputs: --out-dir may lie inside a folder of pictures, or be it
    pictures = picture_paths(args.inputs, exclude=[osp.join(args.out_dir, "maps"), osp.join(args.out_dir, "overlays")])
    model = load_segmentor(args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options,
                           tta=args.tta)
    segment_pictures(model, pictures, args.out_dir, args.opacity)


if __name__ == "__main__":
    run_tool(main)
