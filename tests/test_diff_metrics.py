"""The drift kernels against an independent float64 numpy computation, for every dtype."""

from __future__ import annotations

import math
import warnings

import ml_dtypes
import numpy as np
import pytest

from ckptkit.core.dtypes import DTYPES
from ckptkit.diffing import metrics
from ckptkit.diffing.metrics import Accumulator, accumulate
from tests.helpers import sample_array

FLOAT_DTYPES = [d.name for d in DTYPES if d.kind == "f"]
INT_DTYPES = [d.name for d in DTYPES if d.kind in "iu"]


def reference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The metrics computed the plain way, in float64 over the pairs where both are finite."""
    xa = a.astype(np.float64).ravel()
    xb = b.astype(np.float64).ravel()
    fin = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[fin], xb[fin]
    d = xa - xb
    na, nb = np.linalg.norm(xa), np.linalg.norm(xb)
    return {
        "max_abs": float(np.abs(d).max()),
        "mean_abs": float(np.abs(d).mean()),
        "l2": float(np.linalg.norm(d)),
        "rel_l2": float(np.linalg.norm(d) / na),
        "cosine": float(np.dot(xa, xb) / (na * nb)),
        "norm_a": float(na),
        "norm_b": float(nb),
    }


def assert_close_to_reference(got: dict, a: np.ndarray, b: np.ndarray, rtol: float = 1e-6) -> None:
    want = reference(a, b)
    for key in ("max_abs", "mean_abs", "l2", "rel_l2", "norm_a", "norm_b"):
        assert got[key] == pytest.approx(want[key], rel=rtol), key
    assert got["cosine"] == pytest.approx(want["cosine"], abs=1e-9)
    assert -1.0 <= got["cosine"] <= 1.0


def perturbed(dtype: np.dtype, n: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n) * 0.5
    if dtype.name == "float8_e8m0fnu":  # an exponent-only type: no sign, no zero
        a = np.abs(a) + 0.25
    a = a.astype(dtype)
    b = (a.astype(np.float64) + rng.standard_normal(n) * scale).astype(dtype)
    return a, b


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_float_drift_matches_numpy_across_chunks(dtype):
    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    n = 3 * metrics.CHUNK + 4097  # several chunks, a partial block and a tail
    a, b = perturbed(dt, n, 1e-2)
    got = accumulate(a, b).metrics()
    assert_close_to_reference(got, a, b)
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[dt.itemsize]
    assert got["identical"] == pytest.approx(np.mean(a.view(bits) == b.view(bits)))
    assert got["elements"] == n
    assert got["nan_a"] == got["inf_b"] == got["nonfinite_mismatch"] == 0


def test_span_results_merge_to_the_whole():
    a, b = perturbed(np.dtype(np.float16), 5 * metrics.CHUNK + 11, 1e-3, seed=3)
    whole = accumulate(a, b)
    merged = Accumulator()
    for lo in range(0, a.size, 77_777):
        merged.merge(accumulate(a, b, lo, min(lo + 77_777, a.size)))
    for key in ("max_abs", "l2", "rel_l2", "identical", "elements"):
        assert merged.metrics()[key] == pytest.approx(whole.metrics()[key], rel=1e-7)


def test_every_float16_value_widens_exactly():
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    zeros = np.zeros_like(finite)
    got = accumulate(finite, zeros).metrics()
    ref = finite.astype(np.float64)
    assert got["max_abs"] == 65504.0
    assert got["norm_a"] == pytest.approx(np.linalg.norm(ref), rel=1e-7)
    assert got["mean_abs"] == pytest.approx(np.abs(ref).mean(), rel=1e-7)
    # subnormals only: the smallest magnitudes must not be flushed to zero
    tiny = every[1:1024]
    assert accumulate(tiny, np.zeros_like(tiny)).metrics()["max_abs"] == float(every[1023])


def test_float16_with_large_finite_values_is_not_mistaken_for_inf():
    a = np.full(10_000, 60000.0, np.float16)  # sum of squares far above 2**32
    b = a.copy()
    b[0] = 59968.0
    got = accumulate(a, b).metrics()
    assert got["max_abs"] == 32.0 and got["nan_a"] == got["inf_a"] == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "float8_e5m2"])
def test_nan_and_inf_are_counted_and_excluded_from_drift(dtype):
    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    a, b = perturbed(dt, 50_000, 1e-2, seed=5)
    a[10], b[10] = np.nan, np.nan  # same NaN: not a mismatch
    a[20], b[20] = np.inf, np.inf  # same Inf: not a mismatch
    a[30], b[30] = np.inf, -np.inf  # mismatch
    b[40] = np.nan  # mismatch
    got = accumulate(a, b).metrics()
    assert (got["nan_a"], got["nan_b"], got["inf_a"], got["inf_b"]) == (1, 2, 2, 2)
    assert got["nonfinite_mismatch"] == 2
    assert_close_to_reference(got, a, b)


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integers_are_compared_exactly(dtype):
    a = sample_array(dtype, (1000,), seed=1)
    b = a.copy()
    b[::3] = sample_array(dtype, (334,), seed=2)
    got = accumulate(a, b).metrics()
    exact = [abs(int(x) - int(y)) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    assert got["max_abs"] == max(exact) and isinstance(got["max_abs"], int)
    assert got["mean_abs"] == pytest.approx(sum(exact) / len(exact), rel=1e-12)
    assert got["identical"] == pytest.approx(np.mean(a == b))


def test_int64_extremes_do_not_overflow():
    a = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 7], np.int64)
    b = np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, 7], np.int64)
    assert accumulate(a, b).metrics()["max_abs"] == 2**64 - 1
    c = np.array([2**63 + 5, 1], np.uint64)
    d = np.array([2**63 + 4, 1], np.uint64)
    assert accumulate(c, d).metrics()["max_abs"] == 1


def test_bool_and_complex():
    a = np.array([True, False, True, True])
    b = np.array([True, True, False, True])
    got = accumulate(a, b).metrics()
    assert (got["max_abs"], got["identical"]) == (1, 0.5)
    za = np.array([1 + 1j, 2 - 1j, 3j], np.complex64)
    zb = np.array([1 + 1j, 2 + 1j, 0], np.complex64)
    got = accumulate(za, zb).metrics()
    assert got["max_abs"] == pytest.approx(3.0)
    assert got["l2"] == pytest.approx(math.sqrt(4 + 9))
    assert got["identical"] == pytest.approx(1 / 3)


def test_different_dtypes_compare_values():
    a = np.linspace(-2, 2, 10_001).astype(np.float32)
    b = a.astype(np.float16)
    got = accumulate(a, b).metrics()
    assert_close_to_reference(got, a, b)
    assert got["identical"] == pytest.approx(np.mean(a == b.astype(np.float32)))
    ints = np.arange(-5, 5, dtype=np.int8)
    assert accumulate(ints, ints.astype(np.int64)).metrics()["identical"] == 1.0
    assert accumulate(ints, ints.astype(np.float32)).metrics()["max_abs"] == 0.0


def test_identical_and_empty_and_zero_tensors():
    a, _ = perturbed(np.dtype(np.float16), 100_000, 0)
    got = accumulate(a, a.copy()).metrics()
    assert (got["max_abs"], got["l2"], got["rel_l2"], got["cosine"], got["identical"]) == (0.0, 0.0, 0.0, 1.0, 1.0)
    empty = np.zeros(0, np.float32)
    got = accumulate(empty, empty).metrics()
    assert (got["max_abs"], got["rel_l2"], got["cosine"], got["identical"], got["elements"]) == (0.0, 0.0, 1.0, 1.0, 0)
    zeros, ones = np.zeros(8, np.float32), np.ones(8, np.float32)
    got = accumulate(zeros, ones).metrics()
    assert got["rel_l2"] == math.inf and got["cosine"] == 0.0


def test_snr_of_float64_sums_past_the_float64_range():
    # |A - B|^2 overflows to inf while |A| stays finite: the SNR tends to -inf, not an error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no numpy overflow warning printed under the report
        got = accumulate(np.full(4, 1e150), np.full(4, -1e155)).metrics()
    assert got["l2"] == math.inf and got["snr_db"] == -math.inf
    assert got["max_abs"] == pytest.approx(1e155 + 1e150)


@pytest.mark.parametrize("where", ["first", "last", "middle"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int8"])
def test_chunks_differing_in_one_element_are_not_taken_for_the_same_bytes(dtype, where):
    # The same-bytes shortcut compares a few words first, then the whole chunk: one element
    # changed anywhere in a chunk must still count, and the drift must equal numpy's.
    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    n = 2 * metrics.CHUNK + 3  # an odd byte count in the last chunk: no 64-bit view there
    rng = np.random.default_rng(7)
    a = (rng.standard_normal(n) * 4).astype(dt)
    b = a.copy()
    i = {"first": 0, "last": metrics.CHUNK - 1, "middle": metrics.CHUNK + metrics.CHUNK // 2}[where]
    b[i] = (a[i].astype(np.float64) + 1.5).astype(dt)
    b[-1] = (a[-1].astype(np.float64) - 1.0).astype(dt)
    got = accumulate(a, b).metrics()
    assert got["identical"] * n == pytest.approx(n - 2)
    assert got["max_abs"] == pytest.approx(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    if dt.kind != "i":
        assert_close_to_reference(got, a, b)
    same = accumulate(a, a.copy()).metrics()
    assert (same["identical"], same["l2"], same["max_abs"]) == (1.0, 0.0, 0)
    assert same["norm_a"] == pytest.approx(float(np.linalg.norm(a.astype(np.float64))), rel=1e-6)
