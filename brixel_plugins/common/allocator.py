"""Keep freed CPU memory for reuse instead of handing it back to the OS at every free.

torch's CPU tensors come from the C library's ``malloc``. glibc serves a block above its mmap
threshold (128 KiB at start, raised on its own only as far as the largest block freed so far)
with a fresh ``mmap`` and unmaps it when the tensor is freed, and it trims the heap top as soon as
128 KiB there are free. A model whose intermediate maps are large then touches fresh pages at every
forward and pays a page fault per 4 KiB: the upsamplers' maps are such blocks (a 64x64 map of 384
channels in fp32 is 6 MiB), DINOv3's token arrays at 256 px (0.4 MiB) hardly. The page faults
per image and the time they cost are measured in docs/benchmark.md ("Kept freed memory").

:func:`keep_freed_memory` sets, for this process, what the environment variables
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` would set before
start-up: blocks up to 32 MiB (glibc's maximum) come from the heap, and up to 1 GiB of freed heap
is kept for the next forward. The cost is that memory freed by the process is returned to the OS
later (the peak is unchanged). ``tools/benchmark.py`` calls it (``--default-allocator`` not); call
it at the start of your own CPU inference script, or use jemalloc / tcmalloc (``LD_PRELOAD``),
which keep freed memory too.
It does nothing outside glibc (macOS, musl) and for CUDA tensors (torch caches those itself).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for reuse (see the module docstring). Returns
    whether the settings took effect (False outside glibc). Idempotent."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl has a mallopt that ignores these parameters
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
