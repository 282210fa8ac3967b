"""Comparing tensor values: bit for bit, in units in the last place, and by a fingerprint of their content."""

from __future__ import annotations

import hashlib

import numpy as np

from ckptkit.core.compare import arrays_identical

_SIGNED = {2: np.int16, 4: np.int32, 8: np.int64}


def is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name in ("bfloat16",) or a.dtype.name.startswith("float8")


def ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance between ``a`` and ``b``, element by element, in units in the last place.

    Both must have one floating-point dtype. Floats are mapped onto integers in their order (the
    sign-magnitude bit pattern made two's complement), so the distance counts the representable
    numbers between two values: 0 means bit-equal (and +0/-0 are 0 apart). A NaN on either side
    where the other is not bit-equal gives a distance no bound accepts.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return 2**62
    if arrays_identical(a, b):
        return 0
    width = a.dtype.itemsize
    if width not in _SIGNED or a.dtype.name.startswith("float8"):
        return 2**62
    ints = _SIGNED[width]
    x = np.ascontiguousarray(a).reshape(-1).view(ints).astype(np.int64)
    y = np.ascontiguousarray(b).reshape(-1).view(ints).astype(np.int64)
    top = np.int64(1) << (8 * width - 1)
    x = np.where(x < 0, -(x + top) if width < 8 else np.iinfo(np.int64).min - x, x)
    y = np.where(y < 0, -(y + top) if width < 8 else np.iinfo(np.int64).min - y, y)
    with np.errstate(invalid="ignore"):
        nan = np.isnan(np.asarray(a, np.float64).reshape(-1)) | np.isnan(np.asarray(b, np.float64).reshape(-1))
    if nan.any():
        return 2**62
    return int(np.abs(x - y).max())


def degenerate(a: np.ndarray) -> bool:
    """Whether every element has the same bits (all zeros, all ones, a scalar...).

    Such a value matches any tensor filled alike, so finding it in a checkpoint says nothing
    about where it came from.
    """
    if a.size <= 1:
        return True
    flat = np.ascontiguousarray(a).reshape(-1)
    raw = flat.view(np.uint8).reshape(flat.size, -1)
    head = raw[:64]
    if not (head == head[0]).all():  # most tensors differ within their first elements
        return False
    return bool((raw == raw[0]).all())


SAMPLES = 64


def fingerprint(a: np.ndarray, dtype: np.dtype | None = None) -> bytes:
    """A cheap key for finding candidates equal to ``a`` (cast to ``dtype``), read in C order of its shape.

    Element count, type and 64 elements spread evenly over the tensor, taken through any view
    (a transpose needs no copy) and cast after sampling. Equal tensors share it; a few unequal
    ones may too, which the proof that follows every lookup rules out.
    """
    dtype = a.dtype if dtype is None else dtype
    n = a.size
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((n, np.dtype(dtype).str)).encode())
    if n:
        flat = np.unique(np.linspace(0, n - 1, min(n, SAMPLES)).astype(np.int64))
        picked = a[np.unravel_index(flat, a.shape)] if a.ndim else a.reshape(1)
        h.update(np.ascontiguousarray(np.asarray(picked).astype(dtype)).view(np.uint8).data)
    return h.digest()


def spacing(magnitude: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """One unit in the last place of ``dtype`` at each magnitude, as float64 (subnormal spacing below the normals)."""
    import ml_dtypes

    info = ml_dtypes.finfo(dtype)
    tiny = float(info.smallest_normal)
    exponent = np.floor(np.log2(np.maximum(np.abs(np.asarray(magnitude, np.float64)), tiny)))
    return np.exp2(exponent) * float(info.eps)


def ulps_of(difference: np.ndarray, magnitude: np.ndarray, dtype: np.dtype) -> int:
    """The largest ``|difference|`` in units in the last place of ``dtype`` at ``magnitude``, element by element."""
    diff = np.abs(np.asarray(difference, np.float64))
    if not np.isfinite(diff).all():
        return 2**62
    if diff.size == 0:
        return 0
    return int(np.ceil((diff / spacing(magnitude, dtype)).max()))
