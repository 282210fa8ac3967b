"""The one comparison of tensor contents: bit for bit, chunked."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


COMPARE_CHUNK_BYTES = 16 * 1024 * 1024


def arrays_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality, chunked so no full-size temporary is made."""
    import numpy as np

    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    fa = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    fb = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    return bytes_identical(fa, fb)


def bytes_identical(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> bool:
    """Equality of two 1-D uint8 arrays of the same size (memory maps too), chunk by chunk.

    ``mask``: a bool scratch array of ``COMPARE_CHUNK_BYTES // 8`` elements to reuse across calls.
    """
    import numpy as np

    if a.size != b.size:
        return False
    # Compared as 64-bit words into one reused mask: twice as fast as bytes into fresh masks.
    if mask is None:
        mask = np.empty(min(a.size, COMPARE_CHUNK_BYTES) // 8, dtype=bool)
    for start in range(0, a.size, COMPARE_CHUNK_BYTES):
        x, y = a[start : start + COMPARE_CHUNK_BYTES], b[start : start + COMPARE_CHUNK_BYTES]
        words = x.size // 8
        if words:
            np.not_equal(x[: words * 8].view(np.uint64), y[: words * 8].view(np.uint64), out=mask[:words])
            if mask[:words].any():
                return False
        if not np.array_equal(x[words * 8 :], y[words * 8 :]):
            return False
    return True
