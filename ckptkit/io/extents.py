"""Comparing bytes that lie as-is in files: memory-mapped, in large pieces, on the worker threads.

When a writer copied a tensor without decoding it, source and output hold the same bytes, and
checking the output needs no decoding either: both files are mapped once and compared piece by
piece, the pieces dealt to the worker threads (numpy's comparison releases the GIL).

A write checked afterwards can start that comparison early: inside :func:`checking_copies`, each
tensor a :class:`~ckptkit.io.streaming.TensorCopier` copies as-is is compared with its source on
another thread as soon as its copy returns, while the next tensors are copied. The check after the
write then reads the output back as usual (its header, where each tensor lies) and skips the bytes
of a tensor only where the reader places it exactly where the copy put it, from exactly the
source bytes the check expects; every other tensor is compared afterwards as before.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ckptkit.core.compare import COMPARE_CHUNK_BYTES, bytes_identical
from ckptkit.core.model import ProgressFn, RawExtent
from ckptkit.io.workers import Executor, Stream, balanced_groups, default_executor

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


ExtentKey = tuple[str, int, int]  # real path, offset, length


def extent_key(extent: RawExtent) -> ExtentKey:
    return (os.path.realpath(extent.path), extent.offset, extent.nbytes)


class CopyCheck:
    """Compares each as-is copy with its source while later copies run (see :func:`checking_copies`)."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._pending: list[tuple[ExtentKey, ExtentKey, Future[bool]]] = []
        self._sources = _Maps()  # a source is mapped whole, once; an output grows, so each extent is mapped

    def copied(self, source: RawExtent, output: RawExtent) -> None:
        """``source``'s bytes were just copied to ``output``: compare them on another thread."""
        if not source.nbytes:
            return
        with self._lock:
            try:
                self._sources.open(source.path)
                whole = self._sources[source.path]
            except (OSError, ValueError):  # not mappable: the check after the write compares it
                return
            future = self._stream.submit(_same_bytes, whole, source, output)
            self._pending.append((extent_key(source), extent_key(output), future))

    def close(self) -> None:
        self._sources.close()

    def results(self) -> dict[tuple[ExtentKey, ExtentKey], bool]:
        """Each compared (source, output) pair and whether their bytes were equal."""
        with self._lock:
            pending = list(self._pending)
        found: dict[tuple[ExtentKey, ExtentKey], bool] = {}
        for src, out, future in pending:
            same = future.result()
            found[(src, out)] = same and found.get((src, out), True)
        return found


_CHECK: ContextVar[CopyCheck | None] = ContextVar("ckptkit_copy_check", default=None)


def copy_check() -> CopyCheck | None:
    """The check that as-is copies made now should report to, if any."""
    return _CHECK.get()


@contextlib.contextmanager
def checking_copies(executor: Executor | None = None) -> Iterator[CopyCheck]:
    """Within this scope, tensors copied as-is are compared with their source as they are copied.

    The comparisons run on the worker threads (in the copying thread when there is one CPU); on
    leaving the scope every one has finished.
    """
    check = None
    try:
        with (executor or default_executor()).stream() as stream:
            check = CopyCheck(stream)
            token = _CHECK.set(check)
            try:
                yield check
            finally:
                _CHECK.reset(token)
    finally:
        if check is not None:
            check.close()


def _same_bytes(source_map: mmap.mmap, a: RawExtent, b: RawExtent) -> bool:
    """Whether ``a`` (in the file ``source_map`` maps) holds the bytes ``b`` does."""
    import numpy as np

    from ckptkit.core.compare import bytes_identical

    if a.offset + a.nbytes > len(source_map):
        return False
    try:
        with _mapped(b) as y:
            x = np.frombuffer(source_map, np.uint8, a.nbytes, a.offset)
            result = bytes_identical(x, np.frombuffer(y, np.uint8))
            del x
    except (OSError, ValueError):  # not mappable here: the check after the write compares them
        return False
    return result


@contextlib.contextmanager
def _mapped(extent: RawExtent) -> Iterator[memoryview]:
    """The bytes ``extent`` names, through a map of just their pages."""
    start = extent.offset - extent.offset % mmap.ALLOCATIONGRANULARITY
    with open(extent.path, "rb") as f:
        m = mmap.mmap(f.fileno(), extent.offset - start + extent.nbytes, access=mmap.ACCESS_READ, offset=start)
    view = memoryview(m)[extent.offset - start :]
    try:
        yield view
    finally:
        view.release()
        with contextlib.suppress(BufferError):
            m.close()
