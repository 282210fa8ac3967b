"""One tensor through consecutive snapshots, measured chunk by chunk with each chunk widened once.

For a run of snapshots of one tensor (a *segment*), the elements are walked in chunks of
:data:`CHUNK`; for each chunk, the snapshots in turn: the chunk is widened to the working float
type once (float16 by bit manipulation, bfloat16 by a shift, float32 and float64 used in place),
its own sum of squares taken, then its difference from the previous snapshot's chunk and from the
first snapshot's (both still widened in the thread's buffers, which stay in the core's cache) is
formed in a reused buffer, and its sum of squares and largest magnitude taken. A chunk whose bytes
equal the previous snapshot's is not widened at all: its sums are the previous ones (a frozen
layer costs one compare).

Sums of squares are float sums of :data:`BLOCK` terms added in float64 (as :mod:`ckptkit.diffing.metrics`
does; within about 1e-7 of float64). A chunk holding NaN or Inf, or whose squares overflow the
working type, is measured by :func:`ckptkit.diffing.metrics.accumulate`, which counts the
non-finite values and sums over the elements finite on both sides, exactly as a diff does.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.diffing import fused
from ckptkit.diffing.metrics import accumulate, same_bytes, widen, widened_nonfinite

BLOCK = 4096
# Elements per step. The compiled kernel measures a chunk in one call; what is left per step is
# Python (reads, compares, bookkeeping), so longer steps cost less: ten 500 MB snapshots took
# 0.69-0.77 s in-process at 1M elements, 0.75-0.90 s at 512K, 1.7 s at 64K.
CHUNK = 256 * BLOCK
_SLOTS = 4  # chunks held at once: the first snapshot's, the previous, the current, one spare


@dataclass
class Sums:
    """What a snapshot's tensor adds up to: its own sums and those of its change from the previous and first.

    The same quantities as :class:`ckptkit.timelines.engine.Point`; the ``prev``/``first`` groups
    stay ``None`` when the segment has nothing to compare with.
    """

    elements: int = 0
    sum_sq: float = 0.0
    nan: int = 0
    inf: int = 0
    sum_sq_prev: float | None = None
    sum_sq_update: float | None = None
    max_update: float | None = None
    sum_sq_first: float | None = None
    sum_sq_drift: float | None = None
    max_drift: float | None = None


class ArraySource:
    """A snapshot's tensor as a flat array (a view of a mapped file, or read into memory)."""

    __slots__ = ("flat",)

    def __init__(self, flat: np.ndarray) -> None:
        self.flat = flat

    @property
    def size(self) -> int:
        return int(self.flat.size)

    def chunk(self, lo: int, hi: int, buf: np.ndarray) -> np.ndarray:
        return self.flat[lo:hi]


class FileSource:
    """A snapshot's tensor lying as-is in a file: each chunk read with ``pread`` into a reused buffer.

    Reading into a buffer that stays in cache costs about what ``cat`` does; touching the pages
    of a memory map costs a page fault each and brings the data from memory in a later pass.
    """

    __slots__ = ("dtype", "fd", "offset", "path", "size")

    def __init__(self, fd: int, offset: int, dtype: np.dtype, size: int, path: str) -> None:
        self.fd, self.offset, self.dtype, self.size, self.path = fd, offset, dtype, size, path

    def chunk(self, lo: int, hi: int, buf: np.ndarray) -> np.ndarray:
        item = self.dtype.itemsize
        view = buf[: (hi - lo) * item]
        done = 0
        while done < view.size:
            got = os.preadv(self.fd, [view[done:].data], self.offset + lo * item + done)
            if got <= 0:
                raise CorruptCheckpointError(f"{self.path}: the file ends inside tensor data (truncated?)")
            done += got
        return view.view(self.dtype)


Source = ArraySource | FileSource


@dataclass
class Held:
    """A snapshot's tensor kept for the snapshots after it: where it is and, per chunk, its own sum
    of squares (NaN where the chunk needs the exact path)."""

    source: Source
    own: np.ndarray


class _Buffers:
    """One thread's reused buffers: fresh memory costs far more on first touch than reuse."""

    def __init__(self) -> None:
        self.by_type: dict[np.dtype, list[np.ndarray]] = {}
        self.diff: dict[np.dtype, np.ndarray] = {}
        self.raw = [np.empty(CHUNK * 8, np.uint8) for _ in range(_SLOTS)]

    def get(self, dtype: np.dtype) -> list[np.ndarray]:
        bufs = self.by_type.get(dtype)
        if bufs is None:
            bufs = self.by_type[dtype] = [np.empty(CHUNK, dtype) for _ in range(_SLOTS)]
            self.diff[dtype] = np.empty(2 * CHUNK, dtype)  # the differences from the previous and the first
        return bufs


_local = threading.local()


def _buffers() -> _Buffers:
    b = getattr(_local, "buffers", None)
    if b is None:
        b = _local.buffers = _Buffers()
    return b


def working_type(dtypes: Sequence[np.dtype]) -> np.dtype:
    """float64 when a snapshot stores the tensor in more than 32 bits, else float32."""
    return np.dtype(np.float64) if max(d.itemsize for d in dtypes) > 4 else np.dtype(np.float32)


def sum_sq(w: np.ndarray) -> float:
    """Sum of squares of a working-type chunk: float sums of BLOCK terms, added in float64."""
    if w.dtype == np.float64:
        return float(np.dot(w, w))
    n = w.size
    k = n // BLOCK
    total = 0.0
    if k:
        body = w[: k * BLOCK]
        total = float(np.matmul(body.reshape(k, 1, BLOCK), body.reshape(k, BLOCK, 1)).sum(dtype=np.float64))
    if k * BLOCK < n:
        tail = w[k * BLOCK :]
        total += float(np.dot(tail, tail))
    return total


def _needs_exact(raw: np.ndarray, sq: float) -> bool:
    """Whether a chunk holds NaN or Inf (or squares past the working type): its sums go the exact way."""
    return not math.isfinite(sq) or widened_nonfinite(raw, sq)


class _Pair:
    """Running sums of the change from a reference snapshot to another."""

    __slots__ = ("max_abs", "sq_diff", "sq_ref")

    def __init__(self) -> None:
        self.sq_ref = 0.0
        self.sq_diff = 0.0
        self.max_abs = 0.0


class _Chunk:
    """One snapshot's chunk: raw, its own sum of squares (NaN when it needs the exact path), and
    the buffer it is widened into when the numpy kernel needs it widened."""

    __slots__ = ("_w", "own", "pool", "raw", "same_first", "slot")

    def __init__(self, raw: np.ndarray, pool: np.ndarray, own: float, slot: int, same_first: bool) -> None:
        self.raw, self.pool, self.own, self.slot, self.same_first = raw, pool, own, slot, same_first
        self._w: np.ndarray | None = None

    @property
    def finite(self) -> bool:
        return not math.isnan(self.own)

    def wide(self) -> np.ndarray:
        """The chunk in the working type (widened on first use)."""
        if self._w is None:
            self._w = widen(self.raw, self.pool)
        return self._w


Change = tuple[float, float, float]  # |ref|^2, |x - ref|^2, max |x - ref|


def _fused(raw: np.ndarray, refs: Sequence[_Chunk]) -> tuple[float, tuple[tuple[float, float], ...]] | None:
    """:func:`ckptkit.diffing.fused.changes` of ``raw`` against finite ``refs``; ``None`` where
    the compiled kernel is absent or takes no such type, or a chunk holds NaN or Inf."""
    code = fused.code(raw.dtype)
    if code is None:
        return None
    pairs = []
    for ref in refs:
        ref_code = fused.code(ref.raw.dtype)
        if ref_code is None or not ref.finite:
            return None
        pairs.append((ref.raw, ref_code))
    return fused.changes(raw, code, tuple(pairs))


def _change(ref: _Chunk, x: _Chunk, diff: np.ndarray) -> Change:
    """|ref|^2, |x - ref|^2 and max |x - ref| over the elements finite on both sides."""
    if ref.finite and x.finite and (fast := _fused(x.raw, (ref,))) is not None:
        return ref.own, *fast[1][0]
    if ref.finite and x.finite:
        xw, rw = x.wide(), ref.wide()
        d = np.subtract(xw, rw, out=diff[: xw.size])
        sq = sum_sq(d)
        if math.isfinite(sq):  # else the difference overflowed the working type
            return ref.own, sq, max(float(d.max()), -float(d.min())) if d.size else 0.0
    acc = accumulate(ref.raw, x.raw)
    return acc.sum_sq_a, acc.sum_sq_diff, float(acc.max_abs)


def _row_sums_sq(d: np.ndarray) -> list[float]:
    """:func:`sum_sq` of each row of a 2-D working-type array, in one pass when the rows are whole blocks."""
    rows, m = d.shape
    if d.dtype != np.float32 or m % BLOCK or not m:
        return [sum_sq(row) for row in d]
    k = m // BLOCK
    parts = np.matmul(d.reshape(rows * k, 1, BLOCK), d.reshape(rows * k, BLOCK, 1))
    return [float(v) for v in parts.reshape(rows, k).sum(axis=1, dtype=np.float64)]


def _two_changes(a: _Chunk, b: _Chunk, x: _Chunk, diff: np.ndarray) -> tuple[Change, Change]:
    """:func:`_change` from ``a`` and from ``b`` to ``x``, the two differences formed side by side."""
    if not (a.finite and b.finite and x.finite):
        return _change(a, x, diff), _change(b, x, diff)
    if (fast := _fused(x.raw, (a, b))) is not None:
        (sq_a, max_a), (sq_b, max_b) = fast[1]
        return (a.own, sq_a, max_a), (b.own, sq_b, max_b)
    xw = x.wide()
    m = xw.size
    d = diff[: 2 * m].reshape(2, m)
    np.subtract(xw, a.wide(), out=d[0])
    np.subtract(xw, b.wide(), out=d[1])
    sq_a, sq_b = _row_sums_sq(d)
    if not (math.isfinite(sq_a) and math.isfinite(sq_b)) or not m:
        return _change(a, x, diff), _change(b, x, diff)
    top, bottom = d.max(axis=1), d.min(axis=1)
    return (a.own, sq_a, max(float(top[0]), -float(bottom[0]))), (b.own, sq_b, max(float(top[1]), -float(bottom[1])))


def _add(pair: _Pair, change: Change) -> None:
    pair.sq_ref += change[0]
    pair.sq_diff += change[1]
    pair.max_abs = max(pair.max_abs, change[2])


def _held_chunk(held: Held, lo: int, hi: int, c: int, bufs: _Buffers, pool: list[np.ndarray], slot: int) -> _Chunk:
    raw = held.source.chunk(lo, hi, bufs.raw[slot])
    return _Chunk(raw, pool[slot], float(held.own[c]), slot, False)


def measure_segment(
    sources: Sequence[Source], first: Held | None, prev: Held | None, work: np.dtype, *, starts_run: bool = False
) -> tuple[list[Sums], list[Held]]:
    """Sums for consecutive snapshots of one tensor (of one size), in the working type ``work``.

    ``prev`` is the snapshot just before ``sources[0]`` and ``first`` the run's first snapshot
    (``None``: nothing to compare with); both, when given, of the size of ``sources``.
    ``starts_run`` says that ``sources[0]`` is the run's first snapshot. Returns the sums of each
    snapshot, and each held with its per-chunk sums, for the next segment.
    """
    n = sources[0].size if sources else 0
    chunks = max(1, -(-n // CHUNK))
    own = [np.zeros(chunks) for _ in sources]
    sums = [Sums(elements=n) for _ in sources]
    first_index = 0 if starts_run else -1
    updates = [_Pair() if i > 0 or prev is not None else None for i in range(len(sources))]
    drifts = [_Pair() if (first is not None or (starts_run and i > 0)) else None for i in range(len(sources))]
    bufs = _buffers()
    pool = bufs.get(work)
    diff = bufs.diff[work]
    for c in range(chunks):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        f: _Chunk | None = None
        if first is not None:
            f = _held_chunk(first, lo, hi, c, bufs, pool, 0)
            f.same_first = True
        p: _Chunk | None = None
        if prev is not None:
            p = f if prev is first else _held_chunk(prev, lo, hi, c, bufs, pool, 1)
        for i, src in enumerate(sources):
            busy = (f.slot if f is not None else -1, p.slot if p is not None else -1)
            slot = next(k for k in range(_SLOTS) if k not in busy)
            raw = src.chunk(lo, hi, bufs.raw[slot])
            s = sums[i]
            up = updates[i]
            if p is not None and p.finite and same_bytes(raw, p.raw):
                # The chunk did not change since the previous snapshot: its sums, no widening.
                x = p
                s.sum_sq += p.own
                if up is not None:
                    up.sq_ref += p.own
            else:
                dr = drifts[i] if f is not None and i != first_index else None
                # The references this chunk is measured against: the previous snapshot's for the
                # update, the first's for the drift (one reference when they are the same).
                refs = [p] if p is not None and up is not None else []
                if dr is not None and f is not None and not (refs and p is f):
                    refs.append(f)
                fast = _fused(raw, refs)
                if fast is not None:
                    sq, found = fast
                    x = _Chunk(raw, pool[slot], sq, slot, i == first_index)
                    s.sum_sq += sq
                    measured = [(ref.own, sq_d, max_d) for ref, (sq_d, max_d) in zip(refs, found, strict=True)]
                    if up is not None and p is not None:
                        _add(up, measured[0])
                    if dr is not None:
                        _add(dr, measured[-1])  # from the first, or from the previous when it is the first
                else:
                    w = widen(raw, pool[slot])
                    sq = sum_sq(w)
                    if _needs_exact(raw, sq):
                        acc = accumulate(raw, raw)
                        s.nan += acc.nan_b
                        s.inf += acc.inf_b
                        x = _Chunk(raw, pool[slot], math.nan, slot, i == first_index)
                        sq = acc.sum_sq_b
                    else:
                        x = _Chunk(raw, pool[slot], sq, slot, i == first_index)
                        x._w = w
                    s.sum_sq += sq
                    if p is not None and up is not None and dr is not None and f is not None and p is not f:
                        change, drift = _two_changes(p, f, x, diff)
                        _add(up, change)
                        _add(dr, drift)
                    elif p is not None and up is not None:
                        change = _change(p, x, diff)
                        _add(up, change)
                        if dr is not None:  # the previous snapshot is the first: the same change
                            _add(dr, change)
                    elif dr is not None and f is not None:
                        _add(dr, _change(f, x, diff))
            own[i][c] = x.own
            if i == first_index:
                f = x
            elif x is p and f is not None:  # unchanged since the previous snapshot
                dr = drifts[i]
                assert dr is not None
                _add(dr, (x.own, 0.0, 0.0) if x.same_first else _change(f, x, diff))
            p = x
    for i, s in enumerate(sums):
        if (up := updates[i]) is not None:
            s.sum_sq_prev, s.sum_sq_update, s.max_update = up.sq_ref, up.sq_diff, up.max_abs
        if (dr := drifts[i]) is not None:
            s.sum_sq_first, s.sum_sq_drift, s.max_drift = dr.sq_ref, dr.sq_diff, dr.max_abs
    return sums, [Held(src, own[i]) for i, src in enumerate(sources)]
