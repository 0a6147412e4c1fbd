"""A trial's process keeps the memory it frees, as `python -m smaraad.train` ends up doing.

glibc's malloc returns the top of a heap to the kernel when more than M_TRIM_THRESHOLD bytes are
free there, and serves blocks above M_MMAP_THRESHOLD with their own mmap. Both start at 128 KiB
and grow on their own only when the process frees an mmap-served block: each becomes the size of
the largest such block (trim: twice that), up to 32 MiB (trim 64 MiB). `smaraad.train` decodes
its data set itself and frees buffers larger than 32 MiB, so its thresholds are at the maximum
before training starts. A Ray trial receives its data ready-made from the object store and
never frees a block that large: its trim threshold stays at twice its largest activation, so the
heap is trimmed after a step and every later step's activations fault back in page by page.

Measured on the 2-core AMD EPYC VM (kd, embedded data): the lone trial took 4,000 minor page
faults per second against 46 for `smaraad.train`; with the thresholds below, 3 per second.
`keep_freed_heap` fixes both at glibc's own maxima (which also turns its adjustment off), so a
trial's allocator behaves as the direct run's. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1    # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2 ** 20   # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD   # where glibc's own adjustment puts it


def keep_freed_heap() -> bool:
    """Fix this process's malloc thresholds at glibc's maxima; True where it took effect."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
