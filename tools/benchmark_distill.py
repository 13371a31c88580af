"""Distillation throughput with 1, 2, ... processes: images/s, teacher and student time per step,
peak memory per process (brixel_plugins.benchmark.training). A measurement, not a test.

    python tools/benchmark_distill.py configs/distill/brixel_vits16.py --procs 1,2 --batch 2
    python tools/benchmark_distill.py configs/distill/brixel_vits16.py --device cuda --procs 1,2,4,8 --batch 16
    python tools/benchmark_distill.py configs/distill/brixel_vits16.py --teacher-size 256 \
        --cfg-options model.student_size=64                 # small sizes: a CPU answers in a minute
"""
from __future__ import annotations

import argparse

from brixel_plugins.cli.arguments import positive_int_list
from brixel_plugins.cli.errors import run_tool


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(description="Images/s of distillation with 1, 2, ... processes")
    p.add_argument("config", help="a distillation config, e.g. configs/distill/brixel_vits16.py")
    p.add_argument("--procs", type=positive_int_list, default=[1, 2], help="process counts to time (default 1,2)")
    p.add_argument("--batch", type=int, default=2, help="images per process and step (default 2)")
    p.add_argument("--teacher-size", type=int, help="teacher resolution (default: the config's)")
    p.add_argument("--runs", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU per process, NCCL")
    p.add_argument("--weights", help="DINOv3 weight file (default: random init; the time does not depend on it)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
                   help="config overrides, e.g. model.backbone.arch=vitb16 model.student_size=64")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from brixel_plugins.benchmark.training import format_rows, measure

    options = dict(args.cfg_options)
    if args.teacher_size:
        options["model.teacher_size"] = args.teacher_size
    if args.weights:
        options["model.backbone.weights"] = args.weights
    rows = measure(args.config, options, procs=args.procs, batch=args.batch, runs=args.runs, warmup=args.warmup,
                   threads=args.threads, device=args.device)
    print(format_rows(rows))


if __name__ == "__main__":
    run_tool(main)
