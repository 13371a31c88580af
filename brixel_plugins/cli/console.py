"""What the demos print: their own tables and progress on the console, the frameworks' logs in files."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Union

_CONSOLES: List[int] = []  # the console's stdout while output_to sends fd 1 to a file


@contextmanager
def output_to(path: Union[str, Path]) -> Iterator[Path]:
    """Append everything written to stdout and stderr while the block runs to the file ``path``:
    framework loggers, ``print`` calls (pycocotools' COCOeval tables) and writes from compiled
    code alike, as it redirects the process's file descriptors 1 and 2, not only ``sys.stdout``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _CONSOLES.append(saved[0])
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield path
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        _CONSOLES.pop()
        os.close(saved[0])
        os.close(saved[1])


def say(text: str) -> None:
    """Print ``text`` on the console, also inside :func:`output_to` (whose file gets it too, so the
    log keeps the progress beside the framework's lines)."""
    if not _CONSOLES:
        print(text, flush=True)
        return
    sys.stdout.flush()
    os.write(_CONSOLES[-1], (text + "\n").encode())
    print(text, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A console line every ``every`` training iterations (default a tenth of ``total``) and at the
    last: ``label``, iteration / total, the loss, seconds per iteration and the time left. The
    frameworks' hooks call :meth:`step`; it knows no framework."""

    def __init__(self, label: str, total: int, every: Optional[int] = None):
        self.label, self.total = label, int(total)
        self.every = every or max(1, self.total // 10)
        self.start: Optional[float] = None
        self.first = 0

    def step(self, iteration: int, loss: Optional[float]) -> Optional[str]:
        """Iteration ``iteration`` (1-based) is done with ``loss``; returns the line said, if any."""
        now = time.monotonic()
        if self.start is None:  # the clock starts at the first iteration seen (resumed runs too)
            self.start, self.first = now, iteration - 1
        if iteration % self.every and iteration not in (self.first + 1, self.total):
            return None
        done = iteration - self.first
        per_iter = (now - self.start) / max(1, done - 1) if done > 1 else None
        loss_text = "n/a" if loss is None else f"{loss:.4f}"
        line = f"  [{self.label}] iter {iteration}/{self.total}  loss {loss_text}"
        if per_iter is not None:
            line += f"  {per_iter:.2f} s/iter  ETA {_duration(per_iter * (self.total - iteration))}"
        say(line)
        return line


# Notices of the pinned stack a user can do nothing about: mmseg 1.2 calls its own deprecated
# ``build_loss`` and warns about its own defaults, mmengine and mmcv import ``pkg_resources``.
# The demos hide them (before importing those packages) so their tables stay readable; the
# training tools keep every warning.
STACK_NOTICES = (r"pkg_resources is deprecated", r"``build_loss`` would be deprecated",
                 r"Default ``avg_non_ignore`` is False", r"The draw is False")


def hide_stack_notices() -> None:
    import warnings

    for message in STACK_NOTICES:
        warnings.filterwarnings("ignore", message=message)
