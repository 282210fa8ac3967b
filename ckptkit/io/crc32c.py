"""CRC-32C (Castagnoli), the checksum of TensorFlow checkpoints and LevelDB-style tables.

The ``google-crc32c`` package (``pip install 'ckptkit[tensorflow]'``) computes it in hardware,
about 7 GB/s on one core here. Without it a numpy version runs the CRC over 4096 lanes of a chunk
at once and joins the lanes' results (the CRC is linear over GF(2), so a lane's share is its own CRC
shifted by the bytes after it): about 70 MB/s here, slow for gigabytes but the same result.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


_POLY = 0x82F63B78  # Castagnoli, bit-reversed
_MASK_DELTA = 0xA282EAD8
_LANES = 4096
_CHUNK = _LANES * 4096  # bytes per numpy pass: 16 MiB
_SMALL = 1 << 16  # below this, a plain loop is quicker than setting up lanes
# google-crc32c holds the GIL while it runs: a large buffer goes in pieces of this size, so that
# another thread (one issuing the kernel copies this checksum runs beside) waits at most one piece.
_HW_PIECE = 1 << 20

try:
    import google_crc32c as _hw

    _HAVE_HW = _hw.implementation == "c"
except ImportError:  # the optional package is not installed: the numpy version serves
    _HAVE_HW = False


def accelerated() -> bool:
    """Whether CRC-32C runs in hardware (google-crc32c) rather than in numpy."""
    return _HAVE_HW


def _as_bytes(data: Any) -> np.ndarray:
    import numpy as np

    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.size else np.zeros(0, np.uint8)
    return np.frombuffer(data, np.uint8)


def extend(crc: int, data: Any) -> int:
    """The CRC-32C of the bytes hashed into ``crc`` followed by ``data`` (bytes, a buffer or an array)."""
    if _HAVE_HW:
        # google-crc32c takes bytes and numpy arrays as they are (no copy); other buffers are viewed
        # as arrays. Bytes go straight in, so checking an index's blocks does not import numpy.
        if isinstance(data, bytes) and len(data) <= _HW_PIECE:
            return int(_hw.extend(crc, data))
        view = _as_bytes(data)
        for start in range(0, view.size, _HW_PIECE):
            crc = _hw.extend(crc, view[start : start + _HW_PIECE])
        return int(crc)
    return _extend_numpy(crc, _as_bytes(data))


def value(data: Any) -> int:
    """The CRC-32C of ``data``."""
    return extend(0, data)


def of_file(fd: int, offset: int, nbytes: int) -> int:
    """The CRC-32C of ``nbytes`` bytes of the open file ``fd`` from ``offset``.

    Read by position in 1 MiB pieces (the read releases the GIL): the pages come from the page
    cache as copies, where a memory map would fault in every page and unmap them all at the end,
    which on a 2 GB file took longer than the checksum itself. The pieces are bytes, which
    google-crc32c takes as they are, so numpy is not needed. Raises :class:`EOFError` where the
    file ends first.
    """
    crc = 0
    for start in range(0, nbytes, _HW_PIECE):
        n = min(_HW_PIECE, nbytes - start)
        piece = os.pread(fd, n, offset + start)
        if len(piece) < n:
            raise EOFError(f"the file ends {nbytes - start - len(piece)} bytes before the range does")
        crc = extend(crc, piece)
    return crc


def mask(crc: int) -> int:
    """The CRC as TensorFlow and LevelDB store it: rotated and offset, so that a CRC of data that
    holds CRCs does not degenerate."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """The CRC a stored (masked) value stands for."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# The numpy version.


@cache
def _table() -> np.ndarray:
    import numpy as np

    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


def _raw_loop(state: int, data: np.ndarray) -> int:
    """The register after feeding ``data`` to it, with no inversion before or after."""
    table = _table().tolist()
    for byte in data.tobytes():
        state = table[(state ^ byte) & 0xFF] ^ (state >> 8)
    return state


@cache
def _shift_tables(nbytes: int) -> tuple[list[int], ...]:
    """Lookup tables for the linear map "feed ``nbytes`` zero bytes", one per byte of the register."""
    import numpy as np

    table = _table()
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
    for _ in range(nbytes):
        basis = table[basis & 0xFF] ^ (basis >> 8)
    tables = []
    values = np.arange(256, dtype=np.uint32)
    for k in range(4):
        out = np.zeros(256, np.uint32)
        for bit in range(8):
            out ^= np.where((values >> bit) & 1, basis[8 * k + bit], 0).astype(np.uint32)
        tables.append(out.tolist())
    return tuple(tables)


def _shift(state: int, tables: tuple[list[int], ...]) -> int:
    t0, t1, t2, t3 = tables
    return t0[state & 0xFF] ^ t1[(state >> 8) & 0xFF] ^ t2[(state >> 16) & 0xFF] ^ t3[state >> 24]


def _extend_numpy(crc: int, data: np.ndarray) -> int:
    import numpy as np

    state = crc ^ 0xFFFFFFFF
    pos = 0
    if data.size >= _SMALL:
        table = _table()
        while data.size - pos >= _LANES:
            chunk = min(_CHUNK, (data.size - pos) // _LANES * _LANES)
            lane_len = chunk // _LANES
            rows = np.ascontiguousarray(data[pos : pos + chunk].reshape(_LANES, lane_len).T)
            lanes = np.zeros(_LANES, np.uint32)
            for row in rows:
                lanes = table[(lanes ^ row) & 0xFF] ^ (lanes >> 8)
            shift = _shift_tables(lane_len)
            for lane in lanes.tolist():
                state = _shift(state, shift) ^ lane
            pos += chunk
    state = _raw_loop(state, data[pos:])
    return state ^ 0xFFFFFFFF
