#!/usr/bin/env python
"""Convert an upsampler released by its authors (their ``.pth`` key layout) into a
brixel_plugins weight file that MMSeg / Detectron2 configs and ``DenseFeaturizer`` load.

    python tools/convert_weights.py brixel brixel_vits16.pth work_dirs/brixel_vits16.safetensors --arch vits16
    python tools/convert_weights.py lift lift_dino_s16.pth lift_vits16_x4.safetensors --arch vits16 --factor 4
    python tools/convert_weights.py jbu featup_jbu.pth jbu_vits16_x16.safetensors --arch vits16 --factor 16
    python tools/convert_weights.py jafar vit_small_patch14_dinov2.lvd142m.pth jafar_x4.safetensors --arch vits16
    python tools/convert_weights.py loftup pytorch_model.bin loftup_vits16_x16.safetensors --arch vits16 --factor 16
    python tools/convert_weights.py anyup anyup_paper.pth anyup_vits16.safetensors --arch vits16

JAFAR's files are the authors' training checkpoints: their 'jafar' entry is read, the rest (optimizer
state, the hydra config) is not built. LoftUp's is the hub's pytorch_model.bin (upsampler + ChannelNorm).
"""
import argparse

from brixel_plugins.backbones import ARCHS, FrozenDINOv3
from brixel_plugins.cli.errors import run_tool
from brixel_plugins.files.upsampler_file import convert_release
from brixel_plugins.upsamplers import list_upsamplers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=list_upsamplers())
    ap.add_argument("src", help="the authors' released .pth")
    ap.add_argument("dst", help="output .safetensors")
    ap.add_argument("--arch", required=True, choices=sorted(ARCHS), help="DINOv3 backbone the weights were made for")
    ap.add_argument("--factor", type=int, default=None,
                    help="upsampling factor (LiFT: 2/4/8 recursion; JBU: stack; JAFAR, LoftUp: any)")
    args = ap.parse_args(argv)
    spec = FrozenDINOv3(args.arch, device="meta").spec  # shapes only, no weights needed
    cfg = {} if args.factor is None else {"factor": args.factor}
    print(f"wrote {convert_release(args.src, args.dst, args.method, spec, **cfg)}")


if __name__ == "__main__":
    run_tool(main)
