"""What the demos print: their own tables and progress on the console, the frameworks' logs in files."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


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
        os.close(saved[0])
        os.close(saved[1])
