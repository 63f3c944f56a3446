"""Keep freed buffers of a repeated workload in the process instead of handing them back to the kernel.

Training steps and parsed chunks allocate the same tensors and arrays of a few
megabytes over and over. glibc serves allocations above its mmap threshold with
a fresh ``mmap`` and unmaps them on free (and trims its heap top), so each step
or chunk paid the kernel to zero and fault in those pages again: about a third
of ``esmm aliccp prepare``'s CPU time, and 1.5-2 s of system time per training
epoch of the 1M-row benchmark (batch 4096, 2 threads; 0.5 s with this). Raising
the mmap threshold above the largest reused buffer (and the trim threshold with
it) lets the heap reuse them; the heap then stays at the size of one step's or
one chunk's working set, so memory remains bounded.

Only glibc is tuned (through ``ctypes``, no compiled code); elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX = 1 << 30  # glibc refuses larger values on some versions; 1 GiB is plenty


def keep_freed_memory(largest_reused: int) -> bool:
    """Serve allocations up to ``largest_reused`` bytes from the heap and keep them there
    once freed. Returns whether the allocator took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl has no mallopt)
    size = int(min(max(largest_reused, 1 << 20), _MAX))
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, size) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, 2 * size) == 1) and ok
