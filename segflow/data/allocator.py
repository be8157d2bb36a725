"""glibc malloc settings for the processes that make batches.

Every sample allocates and frees arrays of a few hundred kB to a few MB (a 256² float32 patch is
256 kB, the transforms' outputs as many again). glibc serves blocks above its mmap threshold
(128 kB at start, then the largest block freed so far) with fresh mmap'd pages and returns them
to the system on free, so the next sample touches new pages: 58 page faults per 256² sample
and 0.43 ms instead of 0.16 ms per sample on a 2-core VM (benchmarks/data_race.py's case). A
fixed threshold of 32 MiB keeps such blocks in the heap, where they are reused, and a trim
threshold of 128 MiB stops the heap from being handed back and re-faulted after every batch.
The cost is that a process keeps up to that much freed memory for reuse.

Settings given through glibc's own environment variables (MALLOC_MMAP_THRESHOLD_ and friends)
are left as they are.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 128 << 20), (_M_TOP_PAD, 16 << 20))
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_applied: bool | None = None


def keep_freed_sample_memory() -> bool:
    """Apply the settings above to this process (once; forked loader workers inherit them).
    Returns whether they are in effect: False off glibc or when the environment sets its own."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and not any(v in os.environ for v in _ENV):
            try:
                mallopt = ctypes.CDLL(None).mallopt  # the process's C library; glibc has mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            _applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return _applied
