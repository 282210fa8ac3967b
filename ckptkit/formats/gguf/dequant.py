"""ckptkit's own dequantizers for the common GGML block types, bit for bit gguf-py's.

gguf-py's ``gguf.quants.dequantize`` is the reference: every float it computes is a float32
product (or product then sum) of a float16 scale widened to float32 and a small integer. Those
operations are exact-rounded in IEEE arithmetic, so computing the same operands in the same order
gives the same bits whatever the way the integers are unpacked. The kernels here unpack with
uint8 arithmetic on views of the stored blocks into reused buffers, then apply the scales with
in-place float32 operations in gguf-py's order (``d * q`` then ``- m`` or ``+ m``), a chunk of
blocks at a time, with no per-block Python and no allocation per call beyond the chunk buffers.

Types without a kernel here (the IQ grids, TQ, MXFP4...) are left to gguf-py by the caller.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

QK_K = 256
# Blocks decoded per step: ~64K float32 values (256 KB), so the unpacked integers and the float
# output stay in the core's cache between the steps of one chunk.
CHUNK_ELEMENTS = 1 << 16

# ggml type id -> (block_size, type_size); ids as in ggml.h.
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = 2, 3, 6, 7, 8
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
IQ4_NL, IQ4_XS = 20, 23

_IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
_LITTLE_BITS = np.arange(8, dtype=np.uint8)


class _Scratch:
    """One thread's reused buffers (fresh memory costs far more on first touch than reuse)."""

    def __init__(self) -> None:
        self.flat: dict[tuple[str, type], np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
        """A buffer of ``shape``: a view of the one kept under ``key``, grown when too small."""
        count = math.prod(shape)
        buf = self.flat.get((key, dtype))
        if buf is None or buf.size < count:
            buf = self.flat[(key, dtype)] = np.empty(count, dtype)
        return buf[:count].reshape(shape)


_local = threading.local()


def _scratch() -> _Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = _Scratch()
    return s


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte ``at`` of every block, widened to float32, shape (n, 1)."""
    return b[:, at : at + 2].view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, key: str = "nibbles") -> np.ndarray:
    """The low, then the high 4-bit halves of ``qs`` (n, g, k) as uint8 (n, g, 2, k), in a reused buffer."""
    n, g, k = qs.shape
    u = _scratch().get(key, (n, g, 2, k))
    np.bitwise_and(qs, 0x0F, out=u[:, :, 0, :])
    np.right_shift(qs, 4, out=u[:, :, 1, :])
    return u


# The products below take the small integers straight from uint8/int8 (numpy casts them to float32
# exactly inside the loop): one pass over the output instead of a conversion then a multiply.


def _q8_0(b: np.ndarray, out: np.ndarray) -> None:
    np.multiply(b[:, 2:].view(np.int8), _f16(b, 0), out=out)


def _q4_0(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    u = _nibbles(b[:, 2:].reshape(n, 1, 16))
    np.subtract(u, np.uint8(8), out=u)  # wraps below 8: read as int8 it is q - 8
    np.multiply(u.reshape(n, 32).view(np.int8), _f16(b, 0), out=out)


def _q4_1(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    u = _nibbles(b[:, 4:].reshape(n, 1, 16))
    np.multiply(u.reshape(n, 32), _f16(b, 0), out=out)
    np.add(out, _f16(b, 2), out=out)


def _q5_ints(b: np.ndarray, qh_at: int) -> np.ndarray:
    """The 5-bit values of Q5_0/Q5_1 blocks as uint8 (n, 32): low nibbles, plus 16 where the qh bit is set."""
    n = b.shape[0]
    u = _nibbles(b[:, qh_at + 4 :].reshape(n, 1, 16)).reshape(n, 32)
    bits = np.unpackbits(b[:, qh_at : qh_at + 4], axis=1, bitorder="little")  # (n, 32): bit j is element j
    np.left_shift(bits, 4, out=bits)
    np.bitwise_or(u, bits, out=u)
    return u


def _q5_0(b: np.ndarray, out: np.ndarray) -> None:
    u = _q5_ints(b, 2)
    np.subtract(u, np.uint8(16), out=u)
    np.multiply(u.view(np.int8), _f16(b, 0), out=out)


def _q5_1(b: np.ndarray, out: np.ndarray) -> None:
    u = _q5_ints(b, 4)
    np.multiply(u, _f16(b, 0), out=out)
    np.add(out, _f16(b, 2), out=out)


def _q2_k(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    scales = b[:, :16]
    qs = b[:, 16:80].reshape(n, 2, 1, 32)
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0xF).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
    q = _scratch().get("q2", (n, 2, 4, 32))
    np.right_shift(qs, np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1), out=q)
    np.bitwise_and(q, 3, out=q)
    o = out.reshape(n, 16, 16)
    np.multiply(q.reshape(n, 16, 16), dl, out=o)
    np.subtract(o, ml, out=o)


def _k_scales_6bit(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the eight 6-bit scales and eight 6-bit mins packed in 12 bytes."""
    n = scales.shape[0]
    sc3 = scales.reshape(n, 3, 4)
    d, m, m_d = sc3[:, 0], sc3[:, 1], sc3[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _q3_k(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    hmask = b[:, :32]
    qs = b[:, 32:96]
    scales = b[:, 96:108]
    d = _f16(b, 108)
    lo = (scales[:, :8].reshape(n, 1, 8) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)).reshape(n, 16)
    hi = (scales[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)).reshape(n, 16)
    sc = ((lo & 0x0F) | ((hi & 0x03) << 4)).view(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32)).reshape(n, 16, 1)
    s = _scratch()
    q = s.get("q3", (n, 2, 4, 32))
    np.right_shift(qs.reshape(n, 2, 1, 32), np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1), out=q)
    np.bitwise_and(q, 3, out=q)
    h = s.get("q3h", (n, 8, 32))
    np.right_shift(hmask.reshape(n, 1, 32), _LITTLE_BITS.reshape(1, 8, 1), out=h)
    np.bitwise_and(h, 1, out=h)
    # The value is ql - 4 where the high bit is clear, ql where it is set: ql + 4 * h - 4 (uint8 wraps; int8 reads it).
    np.left_shift(h, 2, out=h)
    np.add(q.reshape(n, 8, 32), h, out=q.reshape(n, 8, 32))
    np.subtract(q, np.uint8(4), out=q)
    np.multiply(q.reshape(n, 16, 16).view(np.int8), dl, out=out.reshape(n, 16, 16))


def _q4_k(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_6bit(b[:, 4:16])
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * mn.astype(np.float32)).reshape(n, 8, 1)
    o = out.reshape(n, 8, 32)
    np.multiply(_nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32), dl, out=o)
    np.subtract(o, ml, out=o)


def _q5_k(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_6bit(b[:, 4:16])
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * mn.astype(np.float32)).reshape(n, 8, 1)
    q = _nibbles(b[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    h = _scratch().get("q5kh", (n, 8, 32))
    np.right_shift(b[:, 16:48].reshape(n, 1, 32), _LITTLE_BITS.reshape(1, 8, 1), out=h)
    np.bitwise_and(h, 1, out=h)
    np.left_shift(h, 4, out=h)
    np.bitwise_or(q, h, out=q)
    o = out.reshape(n, 8, 32)
    np.multiply(q, dl, out=o)
    np.subtract(o, ml, out=o)


def _q6_k(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 1, 64)
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b, 208)
    dl = (d * scales).reshape(n, 16, 1)
    s = _scratch()
    q = s.get("q6", (n, 2, 2, 64))
    np.right_shift(ql, np.array([0, 4], np.uint8).reshape(1, 1, 2, 1), out=q)
    np.bitwise_and(q, 0x0F, out=q)
    h = s.get("q6h", (n, 2, 4, 32))
    np.right_shift(qh, np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1), out=h)
    np.bitwise_and(h, 3, out=h)
    np.left_shift(h, 4, out=h)
    q256 = q.reshape(n, 256)
    np.bitwise_or(q256, h.reshape(n, 256), out=q256)
    np.subtract(q256, np.uint8(32), out=q256)
    np.multiply(q.reshape(n, 16, 16).view(np.int8), dl, out=out.reshape(n, 16, 16))


def _iq4_nl(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    np.take(_IQ4_VALUES, _nibbles(b[:, 2:].reshape(n, 1, 16)).reshape(n, 32), out=out, mode="clip")
    np.multiply(out, _f16(b, 0), out=out)


def _iq4_xs(b: np.ndarray, out: np.ndarray) -> None:
    n = b.shape[0]
    d = _f16(b, 0)
    scales_h = b[:, 2:4].view(np.uint16)  # (n, 1)
    scales_l = b[:, 4:8]
    lo = (scales_l.reshape(n, 4, 1) >> np.array([0, 4], np.uint8).reshape(1, 1, 2)).reshape(n, 8) & 0x0F
    hi = (scales_h >> np.arange(0, 16, 2, dtype=np.uint16).reshape(1, 8)).astype(np.uint8) & 0x03
    sc = (lo | (hi << 4)).view(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    o = out.reshape(n, 8, 32)
    np.take(_IQ4_VALUES, _nibbles(b[:, 8:].reshape(n, 8, 16)).reshape(n, 8, 32), out=o, mode="clip")
    np.multiply(o, dl, out=o)


Kernel = Callable[[np.ndarray, np.ndarray], None]

# ggml type id -> (elements per block, bytes per block, kernel)
KERNELS: dict[int, tuple[int, int, Kernel]] = {
    Q4_0: (32, 18, _q4_0),
    Q4_1: (32, 20, _q4_1),
    Q5_0: (32, 22, _q5_0),
    Q5_1: (32, 24, _q5_1),
    Q8_0: (32, 34, _q8_0),
    Q2_K: (QK_K, 84, _q2_k),
    Q3_K: (QK_K, 110, _q3_k),
    Q4_K: (QK_K, 144, _q4_k),
    Q5_K: (QK_K, 176, _q5_k),
    Q6_K: (QK_K, 210, _q6_k),
    IQ4_NL: (32, 18, _iq4_nl),
    IQ4_XS: (QK_K, 136, _iq4_xs),
}


def supported(ggml_id: int) -> bool:
    """Whether :func:`dequantize_into` decodes this ggml type (others go through gguf-py)."""
    return ggml_id in KERNELS


def dequantize_into(raw: np.ndarray, ggml_id: int, out: np.ndarray) -> np.ndarray:
    """Decode the whole blocks in ``raw`` (uint8, flat) into ``out`` (float32, flat, as many
    elements as the blocks hold) and return ``out``; values are gguf-py's, bit for bit."""
    block, size, kernel = KERNELS[ggml_id]
    n_blocks = raw.size // size
    if raw.size != n_blocks * size or out.size != n_blocks * block:
        raise ValueError(f"{raw.size} bytes of {size}-byte blocks do not fill {out.size} values")
    blocks = raw.reshape(n_blocks, size)
    values = out.reshape(n_blocks, block)
    step = max(1, CHUNK_ELEMENTS // block)
    with np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, n_blocks, step):
            hi = min(lo + step, n_blocks)
            kernel(blocks[lo:hi], values[lo:hi])
    return out
