"""The compiled drift kernel (ckptkit/_fused.c) against the numpy kernels and float64 numpy.

Every test here runs the same sums both ways: once with the compiled kernel and once with
``fused.KERNEL`` set to ``None``, which is what a build without a C compiler gets.
"""

from __future__ import annotations

import os
import sysconfig

import ml_dtypes
import numpy as np
import pytest

from ckptkit.diffing import fused, metrics
from ckptkit.diffing.metrics import accumulate
from ckptkit.timelines import kernel as timeline_kernel
from ckptkit.timelines.kernel import ArraySource, measure_segment, working_type

TYPES = {
    "e": np.dtype(np.float16),
    "b": np.dtype(ml_dtypes.bfloat16),
    "f": np.dtype(np.float32),
    "d": np.dtype(np.float64),
}
KEYS = ("max_abs", "mean_abs", "l2", "rel_l2", "cosine", "norm_a", "norm_b", "identical", "elements")
KERNEL = fused.KERNEL


def test_the_kernel_is_built_wherever_a_c_compiler_is():
    if os.environ.get("CKPTKIT_NO_COMPILED"):
        pytest.skip("CKPTKIT_NO_COMPILED is set: the numpy kernels are asked for")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not any(os.access(os.path.join(d, compiler), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip(f"no C compiler ({compiler}) on this machine, so the install could not build the kernel")
    assert KERNEL is not None, "pip install built no ckptkit._fused though a C compiler is here"


needs_kernel = pytest.mark.skipif(
    KERNEL is None,
    reason="CKPTKIT_NO_COMPILED is set"
    if os.environ.get("CKPTKIT_NO_COMPILED")
    else "ckptkit._fused was not built (no C compiler at install)",
)


def both_ways(monkeypatch: pytest.MonkeyPatch, run):
    """``run()`` with the compiled kernel, then with the numpy kernels."""
    compiled = run()
    monkeypatch.setattr(fused, "KERNEL", None)
    plain = run()
    monkeypatch.setattr(fused, "KERNEL", KERNEL)
    return compiled, plain


def pair(code_a: str, code_b: str, n: int, seed: int = 0, same_every: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normal values, ``b`` a perturbed copy; with ``same_every`` k, every k-th 256-element run is left equal."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n) * 0.5
    a = base.astype(TYPES[code_a])
    b = (base + rng.standard_normal(n) * 1e-2).astype(TYPES[code_b])
    if same_every and code_a == code_b:
        for lo in range(0, n, 256 * same_every):
            b[lo : lo + 256] = a[lo : lo + 256]
    return a, b


@needs_kernel
@pytest.mark.parametrize("code_a", list(TYPES))
@pytest.mark.parametrize("code_b", list(TYPES))
@pytest.mark.parametrize("n", [0, 1, 255, 257, 3 * metrics.CHUNK + 4099])
def test_pair_sums_match_the_numpy_kernel_for_every_pair_of_types(monkeypatch, code_a, code_b, n):
    a, b = pair(code_a, code_b, n, seed=n, same_every=3)
    compiled, plain = both_ways(monkeypatch, lambda: accumulate(a, b).metrics())
    for key in KEYS:
        assert compiled[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-12), key
    assert compiled["identical"] == plain["identical"]
    assert compiled["max_abs"] == plain["max_abs"]  # the same element's |difference|, widened exactly
    if n:
        want = np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))
        assert compiled["l2"] == pytest.approx(want, rel=1e-6)


@needs_kernel
def test_every_float16_and_bfloat16_value_widens_exactly():
    for dtype, bits in ((np.float16, 0x7C00), (ml_dtypes.bfloat16, 0x7F80)):
        every = np.arange(65536, dtype=np.uint16)
        finite = every[(every & bits) != bits].view(dtype)
        finite = finite[np.abs(finite.astype(np.float64)) < 1e15]  # bfloat16's larger squares overflow float32
        sums = fused.pair_sums(finite, fused.code(finite.dtype), np.zeros_like(finite), fused.code(finite.dtype))
        assert sums is not None
        ref = finite.astype(np.float64)
        assert sums[5] == np.abs(ref).max()  # max |a - 0|: the largest finite value, exactly
        assert sums[1] == pytest.approx(np.dot(ref, ref), rel=1e-6)
        assert sums[4] == pytest.approx(np.abs(ref).sum(), rel=1e-6)
        zeros = int(np.count_nonzero(ref == 0))
        assert sums[0] == 1  # only +0 has the bits of +0 (-0 differs in its sign bit)
        assert zeros == 2


@needs_kernel
@pytest.mark.parametrize("code", list(TYPES))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 300, 3 * metrics.CHUNK - 1])
def test_a_chunk_with_nan_or_inf_goes_the_exact_way(monkeypatch, code, bad, where):
    a, b = pair(code, code, 3 * metrics.CHUNK, seed=7, same_every=2)
    b[where] = bad
    a2 = a.copy()
    a2[where] = bad  # the same non-finite value on both sides, inside an otherwise equal run
    for x, y in ((a, b), (b, a), (a2, b)):
        code_x = fused.code(x.dtype)
        chunk = slice(where // metrics.CHUNK * metrics.CHUNK, (where // metrics.CHUNK + 1) * metrics.CHUNK)
        assert fused.pair_sums(x[chunk], code_x, y[chunk], code_x) is None
        compiled, plain = both_ways(monkeypatch, lambda x=x, y=y: accumulate(x, y).metrics())
        for key in (*KEYS, "nan_a", "nan_b", "inf_a", "inf_b", "nonfinite_mismatch"):
            assert compiled[key] == pytest.approx(plain[key], rel=1e-6), key


@needs_kernel
def test_float16_values_near_the_top_of_the_range_are_not_taken_for_inf():
    a = np.full(10_000, 65504.0, np.float16)  # a sum of squares far above 2**32, all finite
    b = np.full(10_000, -65504.0, np.float16)
    sums = fused.pair_sums(a, "e", b, "e")
    assert sums is not None
    assert sums[5] == 131008.0
    assert sums[3] == pytest.approx(10_000 * 131008.0**2, rel=1e-6)


@needs_kernel
def test_a_float32_difference_that_overflows_goes_the_exact_way():
    a = np.full(1000, 3e38, np.float32)
    b = np.full(1000, -3e38, np.float32)
    assert fused.pair_sums(a, "f", b, "f") is None  # squares past float32: the exact path counts them
    got = accumulate(a, b).metrics()
    assert got["max_abs"] == pytest.approx(6e38, rel=1e-6)


@needs_kernel
def test_changes_match_float64_numpy():
    rng = np.random.default_rng(3)
    x, r1, r2 = (rng.standard_normal(5000).astype(np.float16) for _ in range(3))
    sq_x, ((sq1, max1), (sq2, max2)) = fused.changes(x, "e", ((r1, "e"), (r2, "e")))
    X, R1, R2 = (v.astype(np.float64) for v in (x, r1, r2))
    assert sq_x == pytest.approx(np.dot(X, X), rel=1e-6)
    assert sq1 == pytest.approx(np.sum((X - R1) ** 2), rel=1e-6)
    assert sq2 == pytest.approx(np.sum((X - R2) ** 2), rel=1e-6)
    assert max1 == np.abs(X - R1).max()
    assert max2 == np.abs(X - R2).max()
    x[17] = np.inf
    assert fused.changes(x, "e", ((r1, "e"),)) is None
    with pytest.raises(TypeError):
        KERNEL.changes(x.view(np.uint8), "e", ([r1.view(np.uint8), "e"],))


@needs_kernel
def test_misaligned_buffers_give_the_same_sums():
    a, b = pair("f", "f", 10_001, seed=5)
    raw_a = np.frombuffer(b"\0" + a.tobytes(), np.uint8)[1:]  # one byte off every alignment
    raw_b = np.frombuffer(b"\0\0\0" + b.tobytes(), np.uint8)[3:]
    assert fused.KERNEL.pair_sums(raw_a, "f", raw_b, "f") == fused.pair_sums(a, "f", b, "f")


@needs_kernel
@pytest.mark.parametrize("code", ["e", "b", "f", "d"])
def test_timeline_sums_match_the_numpy_kernel(monkeypatch, code):
    n = 2 * timeline_kernel.CHUNK + 1001
    rng = np.random.default_rng(11)
    snaps = [rng.standard_normal(n)]
    for step in range(5):
        nxt = snaps[-1] + rng.standard_normal(n) * 1e-2
        nxt[: timeline_kernel.CHUNK] = snaps[-1][: timeline_kernel.CHUNK]  # a frozen first chunk
        if step == 3:
            nxt[n - 5] = np.nan  # a NaN from the fourth update on, in the last chunk
        snaps.append(nxt)
    arrays = [s.astype(TYPES[code]) for s in snaps]
    work = working_type([a.dtype for a in arrays])

    def run():
        sums, held = measure_segment([ArraySource(a) for a in arrays[:3]], None, None, work, starts_run=True)
        more, _ = measure_segment([ArraySource(a) for a in arrays[3:]], held[0], held[-1], work)
        return [vars(s) for s in sums + more]

    compiled, plain = both_ways(monkeypatch, run)
    for got, want in zip(compiled, plain, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if value is None:
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(value, rel=1e-6), key


@needs_kernel
def test_a_held_chunk_with_nan_is_not_used_as_a_compiled_reference(monkeypatch):
    n = 1000
    first = np.ones(n, np.float16)
    first[3] = np.nan
    later = [np.full(n, 2.0, np.float16), np.full(n, 3.0, np.float16)]
    work = working_type([first.dtype])

    def run():
        sums, held = measure_segment([ArraySource(first)], None, None, work, starts_run=True)
        more, _ = measure_segment([ArraySource(a) for a in later], held[0], held[0], work)
        return [vars(s) for s in sums + more]

    compiled, plain = both_ways(monkeypatch, run)
    assert compiled == plain
    assert compiled[0]["nan"] == 1
    # from the first (a NaN at one place): the drift counts the 999 places finite on both sides
    assert compiled[2]["sum_sq_drift"] == pytest.approx(999 * 4.0)
