"""The compiled drift kernel (``ckptkit/_fused.c``) where the build made it, for float chunks.

It takes the sums that :mod:`ckptkit.diffing.metrics` and :mod:`ckptkit.timelines.kernel` take
with numpy, in one pass over the raw bytes instead of about ten, and lets go of the GIL while
it runs. Where it was not built (no C compiler at install time), or with ``CKPTKIT_NO_COMPILED=1``
in the environment, :data:`KERNEL` is ``None`` and the numpy kernels do the work; both give the
same sums to within float32 rounding of partial sums.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np


def _load() -> ModuleType | None:
    if os.environ.get("CKPTKIT_NO_COMPILED"):
        return None
    try:
        from ckptkit import _fused
    except ImportError:
        return None
    return _fused


KERNEL: ModuleType | None = _load()

# The kernel's one-character type names: numpy's for the IEEE types, "b" for ml_dtypes' bfloat16.
_CODES = {"float16": "e", "bfloat16": "b", "float32": "f", "float64": "d"}


def code(dtype: np.dtype) -> str | None:
    """The kernel's name for ``dtype``, or ``None`` when the kernel is absent or takes no such type."""
    if KERNEL is None or not dtype.isnative:
        return None
    return _CODES.get(dtype.name)


PairSums = tuple[int, float, float, float, float, float]


def pair_sums(a: np.ndarray, code_a: str, b: np.ndarray, code_b: str) -> PairSums | None:
    """``(identical, sum_sq_a, sum_sq_b, sum_sq_diff, sum_abs, max_abs)`` of two flat chunks of
    equal length; ``None`` when either holds NaN or Inf or a sum overflows."""
    assert KERNEL is not None
    return KERNEL.pair_sums(a.view(np.uint8), code_a, b.view(np.uint8), code_b)


def changes(
    x: np.ndarray, code_x: str, refs: tuple[tuple[np.ndarray, str], ...]
) -> tuple[float, tuple[tuple[float, float], ...]] | None:
    """``(sum_sq_x, ((sum_sq_diff, max_abs), ...))``: the sum of squares of flat chunk ``x`` and,
    for each of at most two references (chunks already found finite), of ``x - ref`` with its
    largest magnitude; ``None`` when ``x`` holds NaN or Inf or a sum overflows."""
    assert KERNEL is not None
    return KERNEL.changes(x.view(np.uint8), code_x, tuple((r.view(np.uint8), c) for r, c in refs))
