"""Write a trained model as one self-contained file for inference on another machine.

    .venv/bin/python tools/export_model.py CONFIG CHECKPOINT OUT.safetensors [key=value ...]

CONFIG is an MMSegmentation config (configs/mmseg/..., with a checkpoint of tools/train.py or
mmseg's train.py) or a Detectron2 LazyConfig (configs/d2/..., with a checkpoint of
tools/d2_train.py; ``key=value`` overrides as d2_train.py takes them). OUT holds the head, the neck
and the upsampler (trained or frozen) as safetensors, and the model's config, class names and the
DINOv3 file *by reference* (file name and sha256) as JSON (Detectron2: also the test dataset's
class names, category ids and image ids): copy OUT and Meta's DINOv3 file to the other machine;
tools/infer.py / tools/d2_infer.py find DINOv3 beside OUT, under ``$BRIXEL_WEIGHTS_DIR`` or in the
working directory, and refuse a file with other bytes. OUT carries a sha256 over its header and
tensors: a file edited afterwards is refused; change the config and export again.
"""
from __future__ import annotations

import argparse

from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export config + checkpoint as one self-contained model file")
    p.add_argument("config", help="configs/mmseg/... (MMSegmentation) or configs/d2/... (Detectron2 LazyConfig)")
    p.add_argument("checkpoint", help="checkpoint of tools/train.py, mmseg's train.py or tools/d2_train.py")
    p.add_argument("out", help="the file to write (.safetensors)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="Detectron2 config overrides key=value")
    return p.parse_args(argv)


def is_lazyconfig(path: str) -> bool:
    """mmengine configs (MMSegmentation) inherit ``_base_`` files or name their scope and imports;
    a Detectron2 LazyConfig is plain Python that builds ``model`` with LazyCall (or imports it)."""
    with open(path) as f:
        text = f.read()
    return not any(key in text for key in ("_base_", "custom_imports", "default_scope"))


def main(argv=None) -> None:
    args = parse_args(argv)
    if is_lazyconfig(args.config):
        from brixel_plugins.d2.export import export_checkpoint

        out = export_checkpoint(args.config, args.checkpoint, args.out, args.opts)
    else:
        if args.opts:
            raise ValueError("key=value overrides are for Detectron2 configs; edit the mmseg config instead")
        from brixel_plugins.mmseg.export import export_checkpoint

        out = export_checkpoint(args.config, args.checkpoint, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_tool(main)
