"""glibc's allocator on the CPU training path: keep freed memory for the next step.

A training step on the CPU allocates and frees the same large tensors every step (activations,
gradients, attention gathers of a few MB each). By default glibc serves blocks above its mmap
threshold with fresh `mmap`s and trims the heap's free top back to the OS, so each step faults its
pages in again and the kernel zeroes them (measured in docs/bench/train.md: about 1.1 s of system
time per 10 s of run, and 8-10% of the realistic training step). With mmap disabled for the heap's
blocks and trimming only above 2 GiB of free top, freed blocks are reused by the next step.

Only the allocator changes: every computation and every result is the same. The process keeps
its peak memory until it exits (what a training run does anyway). `OPTIML_CPU_MALLOC=default`
leaves glibc as it is; on a libc without `mallopt` this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: free top above ~2 GiB is still trimmed


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed blocks instead of returning them (idempotent); True if set."""
    if os.environ.get("OPTIML_CPU_MALLOC", "keep") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
