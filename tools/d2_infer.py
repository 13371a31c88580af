"""Detect instances in pictures with a trained LazyConfig detector: COCO-format results and drawings.

    .venv/bin/python tools/d2_infer.py --config-file CONFIG --checkpoint output/model_final.pth \
        --input PICTURE|FOLDER|GLOB [...] --output DIR [--confidence-threshold 0.5] [--device cpu] [key=value ...]
    .venv/bin/python tools/d2_infer.py --model EXPORTED.safetensors --input ... --output DIR

CONFIG and CHECKPOINT as for ``tools/d2_train.py --eval-only`` (the checkpoint holds what
trained; DINOv3 and a frozen upsampler load from the files the config names, found by the lookup
rule of brixel_plugins.files.lookup: the config's folder, ``$BRIXEL_WEIGHTS_DIR``, the working
directory); ``key=value`` overrides the config as there. ``--model`` takes instead the one file
tools/export_model.py writes (DINOv3 found by its recorded name and sha256), which records the
dataset's class names, category ids and image ids: both give the same JSON. Pictures of any size
are resized as the config's test loader says. Writes (each file atomically)

    DIR/coco_instances_results.json   every detection, COCO results format (as COCOEvaluator writes it):
                                      category ids of the dataset; image ids of the dataset's COCO json
                                      for pictures it lists (by file name), the next free ids for others
    DIR/images.json                   COCO "images" (id, file_name, width, height) and "categories"
    DIR/pictures/<name>.png           detections scoring >= --confidence-threshold, drawn by
                                      detectron2's Visualizer

A picture that cannot be read or predicted is listed at the end and the others are still done;
the tool then exits 1 (the JSON holds the pictures done). DIR inside an input folder is skipped.

Run it as a script (the detectron2 wheel's own ``tools`` package shadows this folder for imports).
"""
from __future__ import annotations

import argparse

from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="COCO-format detections and drawings for pictures (Detectron2 LazyConfig)")
    p.add_argument("--config-file", help="the LazyConfig the checkpoint was trained with")
    p.add_argument("--checkpoint", help="checkpoint written by tools/d2_train.py")
    p.add_argument("--model", help="instead of --config-file and --checkpoint: one file of tools/export_model.py")
    p.add_argument("--input", nargs="+", required=True, help="picture files, folders (recursive) or glob patterns")
    p.add_argument("--output", required=True, help="folder for the JSON files and pictures/")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="lowest score drawn in the pictures (the JSON holds every detection)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the config's train.device)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    args = p.parse_args(argv)
    if (args.config_file or args.checkpoint or args.opts) if args.model else not (args.config_file and args.checkpoint):
        p.error("give --config-file and --checkpoint (and any key=value overrides), or --model alone")
    return args


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.cli.pictures import picture_paths
    from brixel_plugins.d2.predictor import LazyPredictor, detect_pictures

    pictures = picture_paths(args.input, exclude=[args.output])  # never our own outputs as inputs
    if args.model:
        predictor = LazyPredictor.from_export(args.model, device=args.device or "cpu")
    else:
        predictor = LazyPredictor.from_config_file(args.config_file, args.checkpoint, args.opts, device=args.device)
    detect_pictures(predictor, pictures, args.output, args.confidence_threshold)


if __name__ == "__main__":
    run_tool(main)
