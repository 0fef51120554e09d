"""Views whose elements lie past 2**31 in their buffer, at almost no memory cost (CPU only).

Triton's interpreter reads host memory at the addresses a kernel computes, so a view into a
mostly untouched buffer of 8 GiB (reserved, not committed) tests 64-bit offsets on a CPU. The view
starts 2**31 elements into the buffer: an offset that wrapped around in int32 then lands inside
the buffer and reads wrong values (zeros) instead of crashing the test process.
"""

import pytest
import torch

INT32_LIMIT = 2**31


def view_past_int32(shape, strides, dtype=torch.bfloat16):
    """An as_strided view of `shape`/`strides` at element offset 2**31 of a fresh CPU buffer."""
    span = 1 + sum((n - 1) * st for n, st in zip(shape, strides, strict=True))
    gib = (INT32_LIMIT + span) * torch.empty((), dtype=dtype).element_size() / 2**30
    try:
        buf = torch.empty(INT32_LIMIT + span, dtype=dtype)
    except RuntimeError as err:  # no address space for it (strict overcommit)
        pytest.skip(f"cannot reserve a {gib:.0f} GiB buffer: {err}")
    return buf.as_strided(shape, strides, INT32_LIMIT)
