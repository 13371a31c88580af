"""Wall time of one call, the one timing primitive of the benchmarks (:mod:`.runner`, :mod:`.training`).

The device is synchronised before and after the call (CUDA runs asynchronously: without it a
call would read as the time to queue its kernels), so the time is the call's, start to finish.
"""
from __future__ import annotations

import time
from typing import Any, Callable, List

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the queued work of ``device`` (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, runs: int = 1) -> List[float]:
    """Seconds of each of ``runs`` calls of ``fn`` on ``device``, one after the other."""
    times = []
    for _ in range(runs):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times
