"""The ``brixel`` command: one subcommand per script of ``tools/``, run exactly as ``python tools/<x>.py``
would run it (the scripts stay the only implementation; the installed package carries them).

    brixel train brixel_plugins::mmseg/linear/<config>.py --work-dir work_dirs/probe
    brixel distill configs/distill/brixel_vits16.py --data-root DIR
    torchrun --nproc-per-node 2 -m brixel_plugins.cli.commands train CONFIG --launcher pytorch

A ``brixel_plugins::<path>`` argument names a config shipped with the package (``<path>`` under
``configs/``); other arguments reach the tool unchanged (``brixel train --help`` is the tool's help).
"""
from __future__ import annotations

import argparse
import difflib
import os
import runpy
import sys
from typing import List, Optional, Sequence

from ..common import packaged
from ..version import __version__
from .errors import DEBUG_ENV, DEBUG_FLAG, run_tool

# subcommand: (script in tools/, one line of help)
COMMANDS = {
    "distill": ("distill.py", "distil an upsampler on a frozen DINOv3 (mmengine Runner)"),
    "train": ("train.py", "train an MMSegmentation model (mmseg's tools/train.py interface)"),
    "test": ("test.py", "evaluate a trained segmentor (mmseg's tools/test.py interface)"),
    "infer": ("infer.py", "segment pictures with a trained segmentor"),
    "export": ("export_model.py", "write a trained model as one self-contained file"),
    "convert": ("convert_weights.py", "convert an upsampler released by its authors to our weight file"),
    "benchmark": ("benchmark.py", "cost of a dense map: high-res backbone vs low-res + upsampler"),
    "benchmark-distill": ("benchmark_distill.py", "distillation throughput with 1, 2, ... processes"),
    "visualize": ("visualize.py", "PCA pictures of DINOv3 and upsampled feature maps"),
    "d2-train": ("d2_train.py", "train or evaluate a Detectron2 LazyConfig detector"),
    "d2-infer": ("d2_infer.py", "detect instances in pictures with a trained detector"),
    "demo": ("demo.py", "the distillation demo"),
    "demo-seg": ("demo_seg.py", "the segmentation demo"),
    "demo-det": ("demo_det.py", "the detection demo"),
    "compare-recipes": ("compare_recipes.py", "release recipe vs our default"),
}


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    table = "\n".join(f"  {name:<{width}}  {hlp}" for name, (_, hlp) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="brixel", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="brixel COMMAND [ARGS ...]   (brixel COMMAND --help: the command's options)",
        description="Frozen DINOv3 + feature upsamplers for MMSegmentation and Detectron2: the tools/ scripts as "
                    "commands.\nA brixel_plugins::<path> argument names a config shipped with the package "
                    "(<path> under configs/).",
        epilog=f"commands:\n{table}\n\nmulti-process: torchrun --nproc-per-node N -m brixel_plugins.cli.commands "
               f"COMMAND CONFIG --launcher pytorch")
    p.add_argument("--version", action="version", version=f"brixel-plugins {__version__}")
    return p


def _resolve_arg(arg: str) -> str:
    # CONFIG, and --config-file=CONFIG
    if arg.startswith(packaged.PREFIX):
        return packaged.resolve_config_name(arg)
    key, eq, value = arg.partition("=")
    if eq and key.startswith("-") and value.startswith(packaged.PREFIX):
        return f"{key}={packaged.resolve_config_name(value)}"
    return arg


def tool_argv(command: str, args: Sequence[str]) -> List[str]:
    """``sys.argv`` for the tool of ``command``: its script, then ``args`` with packaged config names
    replaced by their files."""
    script, _ = COMMANDS[command]
    path = packaged.tool_file(script)
    return [path, *map(_resolve_arg, args)]


def _dispatch(argv: List[str]) -> None:
    parser = _parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv)  # --help, --version, or an unknown option: argparse's answer
        parser.print_help()
        raise SystemExit(2)  # no command given
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, COMMANDS, n=3)
        parser.error(f"unknown command {command!r}" + (f"; did you mean {' or '.join(near)}?" if near else "")
                     + f" (commands: {', '.join(COMMANDS)})")
    tool = tool_argv(command, args)
    try:
        packaged.register_with_mmengine()  # a config given to the tool may inherit brixel_plugins::<path>
    except ImportError:
        pass  # the tools that need mmengine say so themselves
    sys.argv = tool
    runpy.run_path(tool[0], run_name="__main__")  # the tool ends the process through its own run_tool


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"  # run_tool below removes the flag; the tool's own run_tool must see it too
    run_tool(_dispatch, argv)


if __name__ == "__main__":
    main()
