"""Counting NaN and Inf and noticing non-zero elements, chunk by chunk, without float conversion.

IEEE-like floats are checked on their bit patterns: with the sign bit masked off, a value is Inf
when its bits equal those of Inf and NaN when they are greater. One ``and`` and one ``max`` per
chunk answer "any NaN, Inf or non-zero here?"; exact counts are taken only for chunks that hold
NaN or Inf, which a healthy checkpoint has none of.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptkit.core.dtypes import DType

CHUNK_BYTES = 1024 * 1024  # small enough that the masked copy stays in the core's cache

# Types whose Inf and NaN follow IEEE 754 (all-ones exponent); the other float8 types have no
# Inf or encode NaN elsewhere, and go through float32.
_IEEE = ("float16", "bfloat16", "float32", "float64", "float8_e5m2")
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_local = threading.local()


@dataclass
class ValueCounts:
    """What a tensor's values hold: NaN and Inf counts, and whether any element is non-zero."""

    nan: int = 0
    inf: int = 0
    nonzero: bool = False

    def add(self, other: ValueCounts) -> None:
        self.nan += other.nan
        self.inf += other.inf
        self.nonzero = self.nonzero or other.nonzero


def _scratch(nbytes: int) -> np.ndarray:
    """A per-thread buffer reused across chunks (first touch of fresh memory is slow here)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _local.buf = np.empty(max(nbytes, CHUNK_BYTES), np.uint8)
    return buf


class ValueChecker:
    """Accumulates :class:`ValueCounts` over the raw little-endian bytes of one dtype."""

    def __init__(self, dtype: DType) -> None:
        self.dtype = dtype
        self.counts = ValueCounts()
        if dtype.kind in "iub":
            self._mode = "int"
        elif dtype.name in _IEEE:
            self._mode = "ieee"
            bits = _UINT[dtype.itemsize]
            self._bits = np.dtype(bits).newbyteorder("<")
            self._mask: Any = bits((1 << (8 * dtype.itemsize - 1)) - 1)
            self._inf = np.array(np.inf, np.float64).astype(dtype.numpy).view(bits)[()]
        else:
            self._mode = "other"

    def update(self, chunk: memoryview) -> None:
        """Take the next piece of the tensor's bytes (a whole number of elements)."""
        if not len(chunk):
            return
        c = self.counts
        if self._mode == "int":
            if not c.nonzero:
                c.nonzero = bool(np.frombuffer(chunk, np.uint8).max())
        elif self._mode == "ieee":
            bits = np.frombuffer(chunk, self._bits)
            masked = _scratch(len(chunk))[: len(chunk)].view(self._bits)
            np.bitwise_and(bits, self._mask, out=masked)
            top = masked.max()
            if top:
                c.nonzero = True
            if top >= self._inf:
                c.inf += int(np.count_nonzero(masked == self._inf))
                c.nan += int(np.count_nonzero(masked > self._inf))
        else:
            values = np.frombuffer(chunk, self.dtype.numpy.newbyteorder("<"))
            if self.dtype.kind == "f":
                values = values.astype(np.float32)
            c.nan += int(np.count_nonzero(np.isnan(values)))
            c.inf += int(np.count_nonzero(np.isinf(values)))
            c.nonzero = c.nonzero or bool(np.count_nonzero(values))
