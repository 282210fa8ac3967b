"""Drift statistics of two same-shaped tensors, accumulated chunk by chunk in float64.

A chunk is converted to a working float type (float32 for floats of 32 bits or fewer, float64
otherwise) in reused buffers, its differences and squares are summed in blocks of
:data:`BLOCK` elements, and the block sums are added in float64. Sums of a few thousand float32
terms stay within about 1e-7 of the exact value; a float32 sum over a whole tensor does not (a
65M-element embedding gave a cosine similarity of 1.0104). The cosine is derived from the sums
of squares, ``cos = 1 - (|d|^2 - (|a| - |b|)^2) / (2 |a| |b|)``, whose rounding error shrinks
with the drift, so identical tensors give exactly 1.

float16 is widened by bit manipulation (numpy's own float16 cast is about 6x slower), bfloat16
by a 16-bit shift. NaN and Inf are handled by an exact float64 path, which a chunk takes when its
fast sums come out non-finite. Integer tensors are compared exactly: the largest difference is
an exact integer, even for int64 and uint64.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ckptkit.diffing import fused

BLOCK = 4096
# Elements per kernel call. Long enough that the Python between numpy's loops (which holds the
# GIL) does not keep the other thread waiting: at 64K elements two threads ran slower than one.
# Short enough that a chunk decoded on the fly (a GGUF tensor), its widened copies and the
# decoder's own buffers stay in the core's 2 MB cache: at 512K a Q8_0 diff took half as long again.
CHUNK = 96 * BLOCK
_PROBE = 4  # 64-bit words compared first: chunks that differ usually differ at once

_F16_TO_F32_SCALE = np.float32(2.0**112)  # rebias the exponent from 15 to 127
_F16_SIGN_AND_BITS = np.int32(-0x70000001)  # 0x8FFFFFFF: the sign (bit 31) and bits 0-27
_F16_NONFINITE_BOUND = float(2**32)  # a widened Inf/NaN is >= 2**16, so its square is >= 2**32
_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass
class Accumulator:
    """Running sums over the compared elements; :meth:`merge` combines two in order.

    ``finite`` counts the element pairs where both values are finite, over which the drift sums
    run; ``nonfinite_mismatch`` counts the others where the two values differ (NaN against a
    number, +Inf against -Inf, ...). ``max_abs`` is an ``int`` for integer tensors.
    """

    elements: int = 0
    identical: int = 0
    finite: int = 0
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    nonfinite_mismatch: int = 0
    sum_abs: float = 0.0
    sum_sq_diff: float = 0.0
    sum_sq_a: float = 0.0
    sum_sq_b: float = 0.0
    max_abs: float | int = 0

    def merge(self, other: Accumulator) -> None:
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs = max(self.max_abs, other.max_abs)

    def metrics(self) -> dict[str, Any]:
        """The reported metrics; ``inf`` for a relative L2 against an all-zero tensor that changed."""
        norm_a, norm_b = math.sqrt(self.sum_sq_a), math.sqrt(self.sum_sq_b)
        l2 = math.sqrt(self.sum_sq_diff)
        rel_l2 = l2 / norm_a if norm_a > 0 else (0.0 if l2 == 0 else math.inf)
        snr_db = _snr_db(norm_a, l2)
        return {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / self.finite if self.finite else (0.0 if not self.elements else None),
            "l2": l2,
            "rel_l2": rel_l2,
            "snr_db": snr_db,
            "cosine": _cosine(self.sum_sq_diff, norm_a, norm_b) if self.finite or not self.elements else None,
            "identical": self.identical / self.elements if self.elements else 1.0,
            "elements": self.elements,
            "norm_a": norm_a,
            "norm_b": norm_b,
            "nan_a": self.nan_a,
            "nan_b": self.nan_b,
            "inf_a": self.inf_a,
            "inf_b": self.inf_b,
            "nonfinite_mismatch": self.nonfinite_mismatch,
        }


_SUMMED = tuple(f.name for f in fields(Accumulator) if f.name != "max_abs")


def _snr_db(norm_a: float, l2: float) -> float:
    """Signal-to-noise in dB, how quantization error is usually quoted: 20 log10(|A| / |A - B|)."""
    if l2 == 0:
        return math.inf
    ratio = norm_a / l2
    # |A| = 0, or |A - B| past the float64 range (inf), makes the ratio 0: the SNR tends to -inf.
    return 20 * math.log10(ratio) if ratio != 0 else -math.inf


def _cosine(sum_sq_diff: float, norm_a: float, norm_b: float) -> float:
    if norm_a == 0 or norm_b == 0:
        return 1.0 if norm_a == norm_b else 0.0  # the convention torch's cosine_similarity follows
    cos = 1.0 - (sum_sq_diff - (norm_a - norm_b) ** 2) / (2.0 * norm_a * norm_b)
    return min(1.0, max(-1.0, cos))


class _Scratch:
    """One thread's reused buffers: fresh memory costs far more on first touch than reuse."""

    def __init__(self) -> None:
        self.f32 = [np.empty(CHUNK, np.float32) for _ in range(3)]
        self.f64 = [np.empty(CHUNK, np.float64) for _ in range(3)]
        self.equal = np.empty(CHUNK, np.bool_)
        self.ones32 = np.ones(BLOCK, np.float32)
        self.ones64 = np.ones(BLOCK, np.float64)


_local = threading.local()


def _scratch() -> _Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = _Scratch()
    return s


def _working_dtype(a: np.dtype, b: np.dtype) -> np.dtype | None:
    """float32 or float64 for the fast path; ``None`` when the pair needs the exact path."""
    if not (_is_float(a) and _is_float(b)):
        return None
    return np.dtype(np.float32) if max(a.itemsize, b.itemsize) <= 4 else np.dtype(np.float64)


def _is_float(dt: np.dtype) -> bool:
    # ml_dtypes types (bfloat16, float8, float6, float4) report kind "V"; their names say what they are.
    return dt.kind == "f" or (dt.kind == "V" and dt.name.startswith(("bfloat16", "float8", "float6", "float4")))


_SUB_BYTE_INTS = {"int4": np.int8, "int2": np.int8, "uint4": np.uint8, "uint2": np.uint8}


def _widen_sub_byte(x: np.ndarray) -> np.ndarray:
    """ml_dtypes' int4/uint4/int2/uint2 (one element per byte, kind "V") as numpy integers."""
    wide = _SUB_BYTE_INTS.get(x.dtype.name)
    return x if wide is None else x.astype(wide)


def widen(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``x`` as the working float type of ``out`` (float32 or float64): ``x`` itself when it already
    is that type, else written into ``out``. float16 and bfloat16 are widened by bit manipulation;
    a float16 Inf or NaN comes out as a finite number of 2**16 or more (see :func:`widened_nonfinite`).
    """
    if x.dtype == out.dtype:
        return x
    n = x.size
    dst = out[:n]
    if x.dtype == np.float16 and out.dtype == np.float32:
        # Move the 15 magnitude bits into float32 position, keep the sign, then rebias by 2**112;
        # that handles subnormals too. Inf and NaN come out as large finite numbers, which the
        # caller detects from the sums of squares.
        w = dst.view(np.int32)
        np.copyto(w, x.view(np.int16), casting="unsafe")  # sign-extends
        np.left_shift(w, 13, out=w)
        np.bitwise_and(w, _F16_SIGN_AND_BITS, out=w)
        np.multiply(dst, _F16_TO_F32_SCALE, out=dst)
        return dst
    if x.dtype.name == "bfloat16" and out.dtype == np.float32:
        w = dst.view(np.int32)
        np.copyto(w, x.view(np.uint16), casting="unsafe")
        np.left_shift(w, 16, out=w)
        return dst
    np.copyto(dst, x, casting="unsafe")
    return dst


def _block_sum(x: np.ndarray, y: np.ndarray | None, ones: np.ndarray) -> float:
    """sum(x * y) (or sum(x) when ``y`` is None): float sums of BLOCK terms, added in float64."""
    n = x.size
    k = n // BLOCK
    total = 0.0
    if k:
        x2 = x[: k * BLOCK].reshape(k, BLOCK)
        if y is None:
            partial = np.matmul(x2, ones)
        else:
            y2 = y[: k * BLOCK].reshape(k, BLOCK)
            partial = np.matmul(x2[:, None, :], y2[:, :, None]).reshape(k)
        total = float(partial.sum(dtype=np.float64))
    if k * BLOCK < n:
        tail = x[k * BLOCK :]
        total += float(np.sum(tail, dtype=np.float64) if y is None else np.dot(tail, y[k * BLOCK :]))
    return total


def _bits(x: np.ndarray) -> np.ndarray:
    size = x.dtype.itemsize
    if size in _BITS:
        return x.view(_BITS[size])
    return x.view(np.uint64).reshape(x.size, size // 8)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two flat chunks of one type hold the same bytes: a few words first (chunks that
    differ usually differ at once), then all of them, 64 bits at a time where the size allows."""
    if a.dtype != b.dtype or a.size != b.size:
        return False
    wa, wb = _words(a), _words(b)
    if wa[:_PROBE].tobytes() != wb[:_PROBE].tobytes():
        return False
    return bool(np.array_equal(wa, wb))


def _words(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint8).view(np.uint64) if x.nbytes % 8 == 0 else _bits(x)


def _count_identical(a: np.ndarray, b: np.ndarray) -> int:
    if a.dtype != b.dtype:  # different types: equal values count, NaN equals NaN
        xa, xb = _exact_values(a), _exact_values(b)
        same = xa == xb
        if xa.dtype.kind in "fc":
            same |= np.isnan(xa) & np.isnan(xb)
        return int(np.count_nonzero(same))
    eq = _bits(a) == _bits(b)
    if eq.ndim == 2:
        eq = eq.all(axis=1)
    return int(np.count_nonzero(eq))


def _exact_values(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind in "iub":
        return x.astype(np.uint64 if x.dtype == np.uint64 else np.int64)
    if x.dtype.kind == "c":
        return x.astype(np.complex128)
    return x.astype(np.float64)


def accumulate(a: np.ndarray, b: np.ndarray, start: int = 0, stop: int | None = None) -> Accumulator:
    """Drift sums of the flat, C-contiguous arrays ``a`` and ``b`` over elements ``start:stop``."""
    stop = a.size if stop is None else stop
    a, b = _widen_sub_byte(a), _widen_sub_byte(b)
    acc = Accumulator()
    s = _scratch()
    work = _working_dtype(a.dtype, b.dtype)
    for lo in range(start, stop, CHUNK):
        hi = min(lo + CHUNK, stop)
        ca, cb = a[lo:hi], b[lo:hi]
        if work is None or not _fast_chunk(acc, ca, cb, work, s):
            acc.merge(_exact_chunk(ca, cb))
    if not _is_integer_pair(a.dtype, b.dtype):
        acc.max_abs = float(acc.max_abs)
    return acc


def _is_integer_pair(a: np.dtype, b: np.dtype) -> bool:
    return a.kind in "iub" and b.kind in "iub" and (a == b or np.uint64 not in (a, b))


def _fast_chunk(acc: Accumulator, a: np.ndarray, b: np.ndarray, work: np.dtype, s: _Scratch) -> bool:
    """Add a chunk of floats to ``acc``; False, with ``acc`` untouched, if it holds NaN or Inf."""
    n = a.size
    code_a, code_b = fused.code(a.dtype), fused.code(b.dtype)
    if code_a and code_b:
        sums = fused.pair_sums(a, code_a, b, code_b)
        if sums is None:
            return False
        identical, sq_a, sq_b, sq_d, sum_abs, max_abs = sums
    else:
        numpy_sums = _numpy_chunk(a, b, work, s)
        if numpy_sums is None:
            return False
        identical, sq_a, sq_b, sq_d, sum_abs, max_abs = numpy_sums
    acc.elements += n
    acc.finite += n
    acc.identical += identical
    acc.sum_sq_a += sq_a
    acc.sum_sq_b += sq_b
    acc.sum_sq_diff += sq_d
    acc.sum_abs += sum_abs
    acc.max_abs = max(acc.max_abs, max_abs)
    return True


def _numpy_chunk(a: np.ndarray, b: np.ndarray, work: np.dtype, s: _Scratch) -> fused.PairSums | None:
    """The sums of :func:`ckptkit.diffing.fused.pair_sums`, with numpy; ``None`` for NaN or Inf."""
    n = a.size
    same_type = a.dtype == b.dtype
    identical = 0
    if same_type:
        identical = n if same_bytes(a, b) else int(np.count_nonzero(np.equal(_bits(a), _bits(b), out=s.equal[:n])))
    bufs, ones = (s.f32, s.ones32) if work == np.float32 else (s.f64, s.ones64)
    fa = widen(a, bufs[0])
    sq_a = _block_sum(fa, fa, ones)
    if not math.isfinite(sq_a) or widened_nonfinite(a, sq_a):
        return None
    if same_type and identical == n:
        return identical, sq_a, sq_a, 0.0, 0.0, 0.0
    fb = widen(b, bufs[1])
    sq_b = _block_sum(fb, fb, ones)
    if not math.isfinite(sq_b) or widened_nonfinite(b, sq_b):
        return None
    if not same_type:  # both convert exactly to the working type, so equal values compare equal there
        identical = int(np.count_nonzero(np.equal(fa, fb, out=s.equal[:n])))
    d = np.subtract(fa, fb, out=bufs[2][:n])
    sq_d = _block_sum(d, d, ones)
    if not math.isfinite(sq_d):  # the difference overflowed the working type
        return None
    np.abs(d, out=d)
    sum_abs = _block_sum(d, None, ones)
    max_abs = float(d.max()) if n else 0.0
    return identical, sq_a, sq_b, sq_d, sum_abs, max_abs


def widened_nonfinite(x: np.ndarray, sum_sq: float) -> bool:
    """Whether float16 ``x`` holds Inf or NaN, which widen to large finite numbers (see widen).

    Only a sum of squares of at least 2**32 can include one, so the bits are looked at only then.
    """
    if x.dtype != np.float16 or sum_sq < _F16_NONFINITE_BOUND:
        return False
    return bool(np.any((x.view(np.uint16) & 0x7C00) == 0x7C00))


def _exact_chunk(a: np.ndarray, b: np.ndarray) -> Accumulator:
    """Any pair of types, in float64 (complex128), or exactly for integers; NaN and Inf counted."""
    n = a.size
    acc = Accumulator(elements=n, identical=_count_identical(a, b))
    xa, xb = _exact_values(a), _exact_values(b)
    if _is_integer_pair(a.dtype, b.dtype):
        _integer_sums(acc, xa, xb)
        return acc
    xa = xa.astype(np.complex128 if xa.dtype.kind == "c" or xb.dtype.kind == "c" else np.float64, copy=False)
    xb = xb.astype(xa.dtype, copy=False)
    fin_a, fin_b = np.isfinite(xa), np.isfinite(xb)
    nan_a, nan_b = np.isnan(xa), np.isnan(xb)
    acc.nan_a, acc.nan_b = int(np.count_nonzero(nan_a)), int(np.count_nonzero(nan_b))
    acc.inf_a = n - acc.nan_a - int(np.count_nonzero(fin_a))
    acc.inf_b = n - acc.nan_b - int(np.count_nonzero(fin_b))
    both = fin_a & fin_b
    acc.finite = int(np.count_nonzero(both))
    if acc.finite != n:
        same_nonfinite = (nan_a & nan_b) | (xa == xb)
        acc.nonfinite_mismatch = int(np.count_nonzero(~both & ~same_nonfinite))
        xa, xb = xa[both], xb[both]
    # Sums past float64's range are Inf, which the metrics report as such (rel L2 inf, SNR -inf):
    # not a warning for numpy to print under the diff's output.
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.abs(xa - xb)
        acc.sum_abs = float(d.sum())
        acc.sum_sq_diff = float(np.dot(d, d))
        acc.sum_sq_a = float(np.vdot(xa, xa).real)
        acc.sum_sq_b = float(np.vdot(xb, xb).real)
    acc.max_abs = float(d.max()) if d.size else 0.0
    return acc


def _integer_sums(acc: Accumulator, xa: np.ndarray, xb: np.ndarray) -> None:
    """Sums for two int64 (or two uint64) arrays; |a - b| computed exactly in uint64."""
    ua, ub = xa.view(np.uint64), xb.view(np.uint64)
    # |a - b| < 2**64 always, so the wrapped uint64 difference of the larger minus the smaller is exact.
    diff = np.where(xa >= xb, ua - ub, ub - ua)
    fa, fb, fd = xa.astype(np.float64), xb.astype(np.float64), diff.astype(np.float64)
    acc.finite = acc.elements
    acc.sum_abs = float(fd.sum())
    acc.sum_sq_diff = float(np.dot(fd, fd))
    acc.sum_sq_a = float(np.dot(fa, fa))
    acc.sum_sq_b = float(np.dot(fb, fb))
    acc.max_abs = int(diff.max()) if diff.size else 0
