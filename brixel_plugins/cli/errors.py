"""One way for a tool to end on an error: one ``error: ...`` line on stderr and exit 1
(``--debug`` or ``BRIXEL_DEBUG=1`` shows the traceback)."""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Optional, Sequence

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
    said = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)  # str(KeyError) adds quotes
    text = " ".join(_worker_message(str(said)).split()) if str(said).strip() else type(e).__name__
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
