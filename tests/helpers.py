"""The round-trip helper every format's tests use; the value helpers are ckptkit.testing's, which
format plug-ins use too."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import ckptkit
from ckptkit.testing import assert_same_tensors, sample_array, snapshot

__all__ = ["assert_same_tensors", "print_to_terminal", "sample_array", "snapshot", "write_read"]


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


def print_to_terminal(request: Any, lines: list[str]) -> None:
    """Print past pytest's output capture, for summaries a run should show (counts of inputs, kills)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))
