"""Process-wide memory settings for long CPU runs.

:func:`keep_freed_memory` has glibc's malloc keep the large blocks that a network's activations
need instead of mapping them afresh at every call. The package never calls it on import; the
command line (:mod:`diffinverse.reconstruct`) calls it for its own process on a CPU, and a user may
call it in theirs.
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve every block from its heap and keep what is freed (CPU runs).

    glibc maps each block above a threshold (at most 32 MiB) afresh and unmaps it when it is
    freed, so the kernel zero-fills its pages again at every use. A UNet's widest activations at
    fastMRI sizes are such blocks (96 channels x 320 x 368 x 4 bytes = 45 MB per image), which
    then page-fault at every network call (measurements: ``benchmarks/``, the command line's
    allocator benchmark). This sets what ``MALLOC_MMAP_MAX_=0`` and a large
    ``MALLOC_TRIM_THRESHOLD_`` would at start-up; the process then keeps its peak memory.

    Returns:
        Whether it was applied: not on other C libraries, and not when the environment already
        sets ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` (the caller's choice stands).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt takes a C int: 2 GiB - 1 is the largest trim threshold it can be given
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
