"""Summary statistics of a tensor, streamed in chunks and accumulated in float64."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


CHUNK_ELEMENTS = 1 << 20


@dataclass
class TensorStats:
    """min, max, mean and std over the finite values; NaN and Inf counted apart."""

    count: int = 0
    finite: int = 0
    nan: int = 0
    inf: int = 0
    zeros: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_stats(array: np.ndarray) -> TensorStats:
    """Stats of any tensor (ints, bool, float8/bfloat16 via ml_dtypes, complex by magnitude)."""
    import numpy as np

    flat = array.reshape(-1)
    st = TensorStats(count=int(flat.size))
    mean = 0.0
    m2 = 0.0  # sum of squared deviations, merged chunk by chunk (Chan et al.) to avoid cancellation
    lo, hi = math.inf, -math.inf
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        values = np.abs(chunk).astype(np.float64) if chunk.dtype.kind == "c" else chunk.astype(np.float64)
        finite_mask = np.isfinite(values)
        n_finite = int(finite_mask.sum())
        st.nan += int(np.isnan(values).sum())
        st.inf += int(np.isinf(values).sum())
        st.zeros += int((values == 0).sum())
        if n_finite != values.size:
            values = values[finite_mask]
        if values.size:
            lo = min(lo, float(values.min()))
            hi = max(hi, float(values.max()))
            c_mean = float(values.mean())
            dev = values - c_mean
            c_m2 = float(np.dot(dev, dev))
            n_a, n_b = st.finite, values.size
            delta = c_mean - mean
            mean += delta * n_b / (n_a + n_b)
            m2 += c_m2 + delta * delta * n_a * n_b / (n_a + n_b)
        st.finite += n_finite
    if st.finite:
        st.min, st.max = lo, hi
        st.mean = mean
        st.std = math.sqrt(m2 / st.finite)
    return st
