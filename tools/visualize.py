#!/usr/bin/env python
"""PCA pictures: DINOv3 low-res vs high-res vs upsamplers, coloured by the high-res map's PCA.

Writes one PNG grid (a row per image, labelled columns) and prints its path: the command line of
``brixel_plugins.visualize.figure.compare_methods``.

Examples:
    python tools/visualize.py --weights dinov3_vits16_pretrain_lvd1689m-08c60483.pth \\
        --methods bilinear,lift,work_dirs/brixel_vits16.safetensors
    python tools/visualize.py my_photo.jpg coffee --size 256 --hr-size 1024 --out pca.png
"""
from __future__ import annotations

import argparse
import sys
import warnings

from brixel_plugins.cli.arguments import positive_int, torch_device
from brixel_plugins.cli.errors import run_tool
from brixel_plugins.files.method_spec import parse_kv
from brixel_plugins.visualize.figure import EXAMPLE_PHOTOS, compare_methods


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("images", nargs="*", default=list(EXAMPLE_PHOTOS),
                   help=f"image files or scikit-image photo names (default: {' '.join(EXAMPLE_PHOTOS)})")
    p.add_argument("--arch", default="vits16")
    p.add_argument("--weights", default=None, help="DINOv3 weight file (without it the features are random)")
    p.add_argument("--methods", default="bilinear,lift",
                   help="comma-separated upsampler names (name:key=value allowed) or .safetensors files")
    p.add_argument("--size", type=positive_int, default=256,
                   help="low-resolution input (px, a multiple of 16) for DINOv3 and upsamplers")
    p.add_argument("--hr-size", type=positive_int, default=1024,
                   help="high-resolution input (px, a multiple of 16, larger than --size) of the PCA reference")
    p.add_argument("--cell", type=positive_int, default=256, help="pixels per grid cell")
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--backbone-overrides", default="", help="timm overrides for tiny test models")
    p.add_argument("--out", default="work_dirs/visualize/pca.png")
    args = p.parse_args(argv)
    for name, px in (("--size", args.size), ("--hr-size", args.hr_size)):
        if px % 16:
            p.error(f"argument {name}: {px} px is not a multiple of 16 (DINOv3's patch size), "
                    f"e.g. {max(16, px // 16 * 16)}")
    if args.hr_size <= args.size:
        p.error(f"--hr-size ({args.hr_size}) must be larger than --size ({args.size}): it is the high-resolution "
                f"reference the upsampled low-resolution features are compared with")

    from brixel_plugins.backbones import FrozenDINOv3

    with warnings.catch_warnings():
        if args.weights is None:
            warnings.simplefilter("ignore", UserWarning)
            print("note: random-init DINOv3 (no --weights): the pictures show no real features", file=sys.stderr)
        backbone = FrozenDINOv3(args.arch, args.weights, **parse_kv(args.backbone_overrides))
    print(compare_methods(args.images, backbone, [m for m in args.methods.split(",") if m.strip()], args.out,
                          size=args.size, hr_size=args.hr_size, cell=args.cell, device=args.device))
    return 0


if __name__ == "__main__":
    run_tool(main)
