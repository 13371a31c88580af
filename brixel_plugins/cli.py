"""argparse types shared by the tools: a bad value is refused by argparse itself, with the option's
name and what was expected (``error: argument --target: expected a positive integer, got '-4'``)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, List, Optional, Sequence


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_int_list(text: str) -> List[int]:
    """An argparse type: comma-separated positive integers, e.g. ``16,32,48``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    bad = [p for p in parts if not p.isdigit() or int(p) < 1]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers (e.g. 16,32,48), got {text!r}: {', '.join(map(repr, bad))} "
            f"{'is' if len(bad) == 1 else 'are'} not")
    return [int(p) for p in parts]


def torch_device(text: str) -> str:
    """An argparse type: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``meta``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected e.g. cpu, cuda, cuda:0") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"device {text!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r}: MPS is not available on this machine")
    return text


# -- one way for a tool to end on an error ---------------------------------------------------------
DEBUG_ENV = "BRIXEL_DEBUG"
DEBUG_FLAG = "--debug"


def _worker_message(text: str) -> str:
    """torch re-raises a DataLoader worker's error with the worker's whole traceback as its message:
    keep what the error said, and where."""
    m = re.match(r"Caught (\w+) (in DataLoader worker process \d+)\.\s*Original Traceback", text)
    if not m:
        return text
    lines = text.rstrip().splitlines()
    said = [i for i, line in enumerate(lines) if re.match(rf"(\w+\.)*{m.group(1)}(: |$)", line)]
    if not said:
        return text
    return f"{' '.join(lines[said[-1]:]).split(': ', 1)[-1]} ({m.group(2)})"


def _one_line(e: BaseException) -> str:
    text = " ".join(_worker_message(str(e)).split()) if str(e).strip() else type(e).__name__
    # the exception types a user causes (files, values, checkpoints) speak for themselves
    plain = isinstance(e, (OSError, ValueError, LookupError)) or type(e).__name__.endswith("Error") \
        and type(e).__module__.startswith("brixel_plugins")
    return text if plain else f"{type(e).__name__}: {text}"


def run_tool(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None) -> None:
    """Run a tool's ``main(argv)`` and exit with its code; any failure ends in one ``error:`` line on
    stderr and exit status 1. ``--debug`` (anywhere on the command line, removed before ``main``
    parses it) or ``BRIXEL_DEBUG=1`` shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001  every failure, one line; the traceback on request
        if debug:
            raise
        print(f"error: {_one_line(e)} ({DEBUG_FLAG} or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
