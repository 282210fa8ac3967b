"""Comparing bytes that lie as-is in files: memory-mapped, in large pieces, on the worker threads.

When a writer copied a tensor without decoding it, source and output hold the same bytes, and
checking the output needs no decoding either: both files are mapped once and compared piece by
piece, the pieces dealt to the worker threads (numpy's comparison releases the GIL).
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ckptkit.core.compare import COMPARE_CHUNK_BYTES, bytes_identical
from ckptkit.core.model import ProgressFn, RawExtent
from ckptkit.io.workers import Executor, balanced_groups, default_executor

PIECE_BYTES = 64 * 1024 * 1024  # large enough to amortise the per-piece work, small enough to spread


def identical_extents(
    pairs: Sequence[tuple[RawExtent, RawExtent]],
    executor: Executor | None = None,
    progress: ProgressFn | None = None,
) -> list[bool]:
    """For each ``(a, b)``: whether the bytes ``a`` names equal those ``b`` names."""
    import numpy as np

    results = [a.nbytes == b.nbytes for a, b in pairs]
    pieces: list[tuple[int, RawExtent, RawExtent, int, int]] = []  # pair, a, b, start, length
    for i, (a, b) in enumerate(pairs):
        if results[i]:
            pieces += [(i, a, b, s, min(PIECE_BYTES, a.nbytes - s)) for s in range(0, a.nbytes, PIECE_BYTES)]
    if not pieces:
        return results
    maps = _Maps()
    try:
        for _, a, b, _, _ in pieces:
            maps.open(a.path)
            maps.open(b.path)
        runner = executor or default_executor()

        def compare(group: list[int]) -> set[int]:
            mask = np.empty(COMPARE_CHUNK_BYTES // 8, dtype=bool)  # one per thread, reused
            differing: set[int] = set()
            for j in group:
                i, a, b, start, n = pieces[j]
                if i not in differing:
                    x = np.frombuffer(maps[a.path], np.uint8, n, a.offset + start)
                    y = np.frombuffer(maps[b.path], np.uint8, n, b.offset + start)
                    if not bytes_identical(x, y, mask):
                        differing.add(i)
                if progress:
                    progress(n)
            return differing

        groups = balanced_groups([p[4] for p in pieces], runner.workers)
        for differing in runner.map(compare, groups):
            for i in differing:
                results[i] = False
    finally:
        maps.close()
    return results


class _Maps:
    """One read-only map per file."""

    def __init__(self) -> None:
        self._maps: dict[Path, tuple[Any, mmap.mmap]] = {}

    def open(self, path: Path) -> None:
        if path not in self._maps:
            f = open(path, "rb")  # noqa: SIM115 - closed in close()
            try:
                self._maps[path] = (f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            except BaseException:
                f.close()
                raise

    def __getitem__(self, path: Path) -> mmap.mmap:
        return self._maps[path][1]

    def close(self) -> None:
        for f, m in self._maps.values():
            with contextlib.suppress(BufferError):  # an array still views it; unmapped once freed
                m.close()
            f.close()
        self._maps.clear()
