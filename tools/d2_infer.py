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
import json
import os.path as osp
import sys

import numpy as np

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
    from detectron2.config import LazyConfig
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    from brixel_plugins.d2.predictor import LazyPredictor, coco_records, image_ids
    from brixel_plugins.images import load_rgb
    from brixel_plugins.cli.pictures import picture_paths
    from brixel_plugins.common.filesystem import atomic_path, write_text_atomic
    from brixel_plugins.files.lookup import config_folder

    try:
        pictures = picture_paths(args.input, exclude=[args.output])  # never our own outputs as inputs
        if args.model:
            predictor = LazyPredictor.from_export(args.model, device=args.device or "cpu")
        else:
            cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
            with config_folder(args.config_file):  # weight files beside the config, as d2_train.py finds them
                predictor = LazyPredictor(cfg, args.checkpoint, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    meta = predictor.metadata
    ids = image_ids([path for path, _ in pictures], predictor.image_ids)
    results, images, failed = [], [], []
    for i, ((path, name), image_id) in enumerate(zip(pictures, ids), 1):
        try:
            picture = load_rgb(path)
            instances = predictor(picture)
        except (OSError, ValueError) as e:  # not an image, empty, truncated; larger than the padding
            failed.append(f"{path}: {e}")
            print(f"[{i}/{len(pictures)}] {path}: failed ({e})", flush=True)
            continue
        image = np.asarray(picture)
        results += coco_records(instances, image_id, meta)
        images.append({"id": image_id, "file_name": path, "width": image.shape[1], "height": image.shape[0]})
        shown = instances[instances.scores >= args.confidence_threshold].to("cpu")
        drawing = Visualizer(image, meta).draw_instance_predictions(shown).get_image()
        with atomic_path(osp.join(args.output, "pictures", f"{name}.png")) as tmp:
            Image.fromarray(drawing).save(tmp, format="PNG")
        print(f"[{i}/{len(pictures)}] {path}: {len(instances)} detections, {len(shown)} drawn "
              f"(score >= {args.confidence_threshold})", flush=True)
    classes = list(meta.thing_classes)
    categories = [{"id": dataset_id, "name": classes[i]}
                  for dataset_id, i in sorted(meta.thing_dataset_id_to_contiguous_id.items())]
    write_text_atomic(osp.join(args.output, "coco_instances_results.json"), json.dumps(results))
    write_text_atomic(osp.join(args.output, "images.json"),
                      json.dumps({"images": images, "categories": categories}, indent=1))
    print(f"detections: {osp.join(args.output, 'coco_instances_results.json')} (images: images.json)\n"
          f"pictures:   {osp.join(args.output, 'pictures')}")
    if failed:
        print(f"{len(failed)} of {len(pictures)} pictures failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        sys.exit(f"error: {len(failed)} of {len(pictures)} pictures could not be read or predicted (listed above); "
                 f"the JSON holds the {len(pictures) - len(failed)} done")


if __name__ == "__main__":
    run_tool(main)
