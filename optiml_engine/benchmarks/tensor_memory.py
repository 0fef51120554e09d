"""The extra memory a piece of code holds at its peak, measured on the CPU without a CUDA
allocator to ask: the C heap's bytes in use (glibc's mallinfo2: every tensor storage, a
storage resized in place, a collective's buffers, Python's large objects) sampled before and
after every aten operator the code runs.

    with PeakMemory() as mem:
        engine.train_step(...)
    mem.peak  # bytes above what was in use when the block began

What is freed inside the block lowers the count; allocations made and freed within one
operator (a kernel's scratch) are not seen. Small Python objects add noise of kilobytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from torch.utils._python_dispatch import TorchDispatchMode


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):  # not glibc, or glibc older than 2.33
        return None


_LIBC = _libc()
AVAILABLE = _LIBC is not None


def heap_in_use() -> int:
    """Bytes the C heap has handed out and not taken back (arenas plus mmapped blocks)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class PeakMemory(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        if not AVAILABLE:
            raise RuntimeError("PeakMemory needs glibc's mallinfo2 (Linux, glibc >= 2.33)")
        self.start = heap_in_use()
        self.peak = 0

    def __enter__(self):
        self.start = heap_in_use()
        self.peak = 0
        return super().__enter__()

    def _sample(self) -> None:
        self.peak = max(self.peak, heap_in_use() - self.start)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sample()
        out = func(*args, **(kwargs or {}))
        self._sample()
        return out
