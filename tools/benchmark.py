#!/usr/bin/env python
"""Cost of a dense DINOv3 feature map: high-resolution backbone vs low resolution + upsampler.

Prints a Markdown table for ``--target`` (tokens per side): ``highres`` (DINOv3 on the enlarged
image), ``backbone`` (DINOv3 alone at the low resolution) and every method, with each row's
overhead over the backbone alone in percent (FLOPs and latency); writes ``benchmark.csv`` (every
size of the sweep) and ``benchmark_sweep.png`` to ``--out-dir``. The ``brixel_plugins.benchmark``
package documents what is counted and how (FLOP convention: 2 per multiply-add).

Examples:
    python tools/benchmark.py --arch vits16 --weights dinov3_vits16_pretrain_lvd1689m-08c60483.pth
    python tools/benchmark.py --device cuda --dtype bf16 --runs 50 --methods brixel,brixel_lean
    python tools/benchmark.py --methods brixel,brixel_lean --threads 1 --runs 20   # steadier on a busy CPU
    python tools/benchmark.py --methods bilinear,lift --target 8 --sizes 4,8 \\
        --backbone-overrides depth=4,embed_dim=64,num_heads=2 --runs 1 --warmup 0 --out-dir /tmp/b
"""
from __future__ import annotations

import argparse
import sys

from brixel_plugins.benchmark import DEFAULT_METHODS, BenchConfig
from brixel_plugins.benchmark.report import benchmark_report
from brixel_plugins.cli.arguments import non_negative_int, positive_float, positive_int, positive_int_list, torch_device
from brixel_plugins.cli.errors import run_tool
from brixel_plugins.files.method_spec import parse_kv, parse_methods


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--arch", default="vits16", help="DINOv3 arch (vits16, vitb16, vitl16, vith16plus, ...)")
    p.add_argument("--weights", default=None, help="DINOv3 weight file (default: random init; timing is the same)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated registry names, with options as name:key=value:key=value, or "
                        "upsampler .safetensors files; 'highres' is always added as the reference")
    p.add_argument("--factor", type=positive_int, default=4,
                   help="upsampling factor; the low-resolution input is target/factor*16 px (default 4: 256 px "
                        "for 64x64)")
    p.add_argument("--scale", type=positive_float, default=None,
                   help="a non-integer upsampling instead of --factor, e.g. 3.5: every row gives the target from a "
                        "target/scale token grid (--target 56: 16x16 tokens, 256 px); only methods with any output "
                        "size (bilinear, bicubic, anyup, jafar, loftup); highres is DINOv3 at the output's resolution")
    p.add_argument("--large-output", type=positive_int, default=None, metavar="PX",
                   help="also print each method's peak memory beyond its output, from the (1, D, PX/16, PX/16) map of "
                        "a PX px image to a PX x PX output, measured in a fresh process (e.g. 2048; minutes on CPU)")
    p.add_argument("--target", type=positive_int, default=64, help="output tokens per side of the table's rows")
    p.add_argument("--sizes", type=positive_int_list, default=None,
                   help="comma-separated targets for the sweep (CSV + plot), e.g. 16,32,48,64")
    p.add_argument("--device", type=torch_device, default="cuda" if _cuda() else "cpu",
                   help="cpu, cuda, cuda:N, or meta (FLOPs only)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs (the first one counts FLOPs)")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs per row")
    p.add_argument("--compile", action="store_true",
                   help="run every row's model through torch.compile (inductor; on CPU it needs a C++ compiler); "
                        "FLOPs are counted before, the first warm-up compiles (minutes)")
    p.add_argument("--throughput-batch", type=non_negative_int, default=8,
                   help="images per batch for the images/s column, timed round-robin like the latency "
                        "(not for highres); 0: skip it")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 gives steadier timings on a busy machine")
    p.add_argument("--default-allocator", action="store_true",
                   help="leave glibc's malloc as it starts (frees large blocks to the OS, so every run pays page "
                        "faults on its large maps); by default freed memory is kept for reuse, see "
                        "brixel_plugins.common.allocator")
    p.add_argument("--isolate", action="store_true",
                   help="measure every row in a fresh process (honest CPU peak memory; slower)")
    p.add_argument("--backbone-overrides", default="",
                   help="timm overrides for tiny test models, e.g. depth=4,embed_dim=64,num_heads=2")
    p.add_argument("--out-dir", default="work_dirs/benchmark")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop methods that are not registered (with a note) instead of failing")
    args = p.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    methods = parse_methods(args.methods)
    if args.skip_missing:
        from brixel_plugins.upsamplers import list_upsamplers

        missing = [m.name for m in methods if m.path is None and m.name not in list_upsamplers()]
        if missing:
            print(f"skipping unregistered methods {missing}; registered: {', '.join(list_upsamplers())}",
                  file=sys.stderr)
        methods = [m for m in methods if m.path is not None or m.name not in missing]
    sizes = sorted({args.target, *(args.sizes or [])})
    cfg = BenchConfig(arch=args.arch, weights=args.weights, backbone_overrides=parse_kv(args.backbone_overrides),
                      factor=args.factor, scale=args.scale, device=args.device, dtype=args.dtype,
                      batch_size=args.batch_size,
                      warmup=args.warmup, runs=args.runs, throughput_batch=args.throughput_batch,
                      compile=args.compile, keep_freed_memory=not args.default_allocator)
    benchmark_report(methods, cfg, sizes, args.target, args.out_dir, isolate=args.isolate,
                     large_output=args.large_output)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    run_tool(main)
