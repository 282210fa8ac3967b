"""The round-trip helper every format's tests use."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import ckptkit
from ckptkit.core.model import Checkpoint


def snapshot(arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    return {k: np.ascontiguousarray(v).tobytes() for k, v in arrays.items()}


def assert_same_tensors(expected: Mapping[str, np.ndarray], ckpt: Checkpoint) -> None:
    """Every expected tensor is in ``ckpt`` with the same dtype, shape and bytes (aliases count)."""
    names = set(ckpt.names()) | set(ckpt.aliases)
    assert names == set(expected), sorted(names ^ set(expected))
    for name, want in expected.items():
        got = ckpt.read_tensor(ckpt.aliases.get(name, name))
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), name


def write_read(
    arrays: Mapping[str, np.ndarray], path: Path, format: str | None = None, **options: object
) -> dict[str, np.ndarray]:
    """Save ``arrays`` with ckptkit, read them back, check bit equality and that the input is unchanged."""
    before = snapshot(arrays)
    ckptkit.save(dict(arrays), path, format, **options)
    assert snapshot(arrays) == before, "the writer changed its input"
    with ckptkit.load(path) as ckpt:
        assert_same_tensors(arrays, ckpt)
        return {n: np.array(ckpt.read_tensor(ckpt.aliases.get(n, n))) for n in arrays}


def sample_array(dtype_name: str, shape: tuple[int, ...] = (3, 5), seed: int = 0) -> np.ndarray:
    """Seeded values of any ckptkit dtype, with NaN and Inf among floats where the type has them."""
    from ckptkit.core.dtypes import by_name

    dt = by_name(dtype_name)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dt.kind == "b":
        return (rng.integers(0, 2, n) == 1).reshape(shape)
    if dt.kind in "iu":
        info = ml_dtypes.iinfo(dt.numpy)  # numpy's iinfo does not know int4 and friends
        carrier = dt.numpy if dt.numpy.kind in "iu" else np.int8
        values = rng.integers(int(info.min), int(info.max), n, dtype=carrier, endpoint=True)
        return values.astype(dt.numpy).reshape(shape)
    if dt.kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dt.numpy).reshape(shape)
    values = (rng.standard_normal(n) * 4).astype(np.float32)
    if dt.name == "float8_e8m0fnu":  # powers of two only: no sign, no zero
        values = np.abs(values) + 0.5
    if n >= 3 and dt.name not in _NO_INF:
        values[1] = np.inf
    if n >= 3 and dt.name not in _NO_NAN:
        values[2] = np.nan
    return values.astype(dt.numpy).reshape(shape)


_NO_NAN = {"float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn"}
_NO_INF = {"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", *_NO_NAN}


def print_to_terminal(request: Any, lines: list[str]) -> None:
    """Print past pytest's output capture, for summaries a run should show (counts of inputs, kills)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))
