"""CRC-32 as zip files use it, at the speed of the fastest implementation installed.

zlib's ``crc32`` runs at about 4 GB/s on one core of a small machine; the ``zlib-ng`` package
(``pip install ckptkit[fast]``) computes the same checksum at 20-26 GB/s. Either way a large
tensor's checksum is computed chunk by chunk on the threads that copy it (both release the GIL)
and the chunks' checksums are joined with :func:`crc32_combine`, which needs no data.
"""

from __future__ import annotations

import zlib
from typing import Any

_NOT_LOOKED_UP: Any = object()
_zlib_ng: Any = _NOT_LOOKED_UP  # the zlib-ng module, None without it; imported on first use


def _fast() -> Any:
    global _zlib_ng
    if _zlib_ng is _NOT_LOOKED_UP:
        try:  # an optional dependency: the extra "fast"
            from zlib_ng import zlib_ng

            _zlib_ng = zlib_ng
        except ImportError:  # pragma: no cover - depends on what is installed
            _zlib_ng = None
    return _zlib_ng


def implementation() -> str:
    """Which library computes the checksums: "zlib-ng" or "zlib"."""
    return "zlib-ng" if _fast() is not None else "zlib"


def crc32(data: Any, value: int = 0) -> int:
    """The CRC-32 of the bytes-like ``data``, continuing from ``value`` (0 to start)."""
    fast = _fast()
    return int(fast.crc32(data, value) if fast is not None else zlib.crc32(data, value))


_POLY = 0xEDB88320  # CRC-32 (ISO-HDLC), bit-reversed


def _multiply(a: int, b: int) -> int:
    """``a * b`` modulo the CRC polynomial, both in the reflected bit order CRC-32 uses."""
    product = 0
    mask = 1 << 31
    while mask:
        if a & mask:
            product ^= b
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
        mask >>= 1
    return product


def _x_to_the_power_of_two(n: int) -> list[int]:
    # table[k] = x^(2^k) modulo the polynomial; x^1 is 1 << 30 in reflected order.
    table = [1 << 30]
    for _ in range(n - 1):
        table.append(_multiply(table[-1], table[-1]))
    return table


_X2N = _x_to_the_power_of_two(64)


def _crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    # Appending len2 bytes multiplies the first CRC by x^(8 * len2): the method of zlib's crc32_combine.
    factor = 1 << 31  # x^0
    bits, k = len2 * 8, 0
    while bits:
        if bits & 1:
            factor = _multiply(_X2N[k % 64], factor)
        bits >>= 1
        k += 1
    return _multiply(factor, crc1) ^ crc2


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc1`` of A, ``crc2`` of B and B's length ``len2``."""
    combine = getattr(_fast(), "crc32_combine", None)  # absent from older zlib-ng bindings
    if combine is not None:
        return int(combine(crc1, crc2, len2))
    return _crc32_combine(crc1 & 0xFFFFFFFF, crc2 & 0xFFFFFFFF, len2)
