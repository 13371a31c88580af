"""Peak memory of a block of code (:class:`PeakMemory`).

- CUDA: the rise of ``torch.cuda.max_memory_allocated`` over the block plus the models'
  parameter and buffer bytes (weights + activations + workspace, like the BRIXEL authors'
  figure), so other rows' models resident at the same time do not count.
- CPU: the rise of the process's peak resident set size over the block (Linux: the peak is
  reset through ``/proc/self/clear_refs`` after returning freed heap to the OS with
  ``malloc_trim``) plus the models' parameter and buffer bytes. Caveats: the allocator may reuse
  pages an earlier row freed but kept (an under-estimate), and RSS counts everything the process
  touched (lazily loaded library pages, thread stacks: an over-estimate). Running every row in a
  fresh process (``isolate``) removes the first. Without ``/proc`` it falls back to
  ``getrusage`` (the peak of the whole process life: meaningful with ``isolate`` only).
  ``method`` says which was used.
"""
from __future__ import annotations

import contextlib
import ctypes
import resource
from typing import Optional

import torch
from torch import nn


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS, then reset VmHWM to the current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: ``peak_bytes`` of the block on ``device`` (+ ``resident_bytes`` on CPU)."""

    def __init__(self, device: torch.device, resident_bytes: int = 0):
        self.device = device
        self.resident_bytes = resident_bytes
        self.peak_bytes = float("nan")
        self.method = "none"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_peak_delta+weights"
        elif _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
            self._base = _proc_status_kib("VmRSS")
            self.method = "rss_peak_delta+weights"
        else:
            self._base = 0
            self.method = "ru_maxrss(process)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base + self.resident_bytes
        elif self.method.startswith("rss"):
            self.peak_bytes = (_proc_status_kib("VmHWM") - self._base) * 1024 + self.resident_bytes
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def module_bytes(*modules: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``modules``."""
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
