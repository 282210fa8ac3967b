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

Where the CRC-32C of the source's bytes is known, the early check reads the output alone: it
computes the copy's CRC-32C (in hardware, google-crc32c) and compares the two. A TensorFlow
checkpoint records one per tensor (:attr:`RawExtent.crc32c`), and the TensorFlow writer computes
one from the source for its index anyway. Damage to a copy goes unseen only where it leaves the
CRC-32C unchanged: never for a burst of up to 32 bits, about once in 2**32 for random damage; this
is the check TensorFlow itself restores with. A checksum that differs sends the copy to the byte
comparison, so a source whose recorded checksum is wrong converts as it did.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ckptkit.core.compare import COMPARE_CHUNK_BYTES, bytes_identical
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.model import ProgressFn, RawExtent
from ckptkit.io.workers import Executor, Stream, balanced_groups, default_executor

PIECE_BYTES = 64 * 1024 * 1024  # large enough to amortise the per-piece work, small enough to spread
SMALL_BYTES = 4 * 1024 * 1024  # extents this small in all are compared as bytes read, in the calling thread


def identical_extents(
    pairs: Sequence[tuple[RawExtent, RawExtent]],
    executor: Executor | None = None,
    progress: ProgressFn | None = None,
) -> list[bool]:
    """For each ``(a, b)``: whether the bytes ``a`` names equal those ``b`` names."""
    results = [a.nbytes == b.nbytes for a, b in pairs]
    pieces: list[tuple[int, RawExtent, RawExtent, int, int]] = []  # pair, a, b, start, length
    for i, (a, b) in enumerate(pairs):
        if results[i]:
            pieces += [(i, a, b, s, min(PIECE_BYTES, a.nbytes - s)) for s in range(0, a.nbytes, PIECE_BYTES)]
    if not pieces:
        return results
    if sum(p[4] for p in pieces) <= SMALL_BYTES:
        return _identical_small(pairs, results, progress)
    import numpy as np

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


def _identical_small(
    pairs: Sequence[tuple[RawExtent, RawExtent]], results: list[bool], progress: ProgressFn | None
) -> list[bool]:
    """:func:`identical_extents` of a few small extents (a verify whose large tensors were checked
    as they were copied): read as bytes in this thread, without numpy, whose import alone costs
    more than these reads."""
    files: dict[Path, int] = {}
    try:
        for i, (a, b) in enumerate(pairs):
            if not results[i]:
                continue
            for e in (a, b):
                if e.path not in files:
                    files[e.path] = os.open(e.path, os.O_RDONLY)
            results[i] = os.pread(files[a.path], a.nbytes, a.offset) == os.pread(files[b.path], b.nbytes, b.offset)
            if progress:
                progress(a.nbytes)
    finally:
        for fd in files.values():
            os.close(fd)
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
        self._outputs: dict[Path, int] = {}  # read by position for checksums

    def copied(self, source: RawExtent, output: RawExtent, crc32c: Future[int] | None = None) -> None:
        """``source``'s bytes were just copied to ``output``: check the copy on another thread.

        Where the CRC-32C of the source's bytes is known (``crc32c``, computed from them by the
        writer, else the one the source file records, ``source.crc32c``) and runs in hardware,
        the copy's CRC-32C is compared with it: that reads the output alone, where comparing
        bytes reads both files. A copy whose checksum differs is compared as bytes, so a source
        whose recorded checksum is wrong fares as before. Otherwise the bytes are compared.
        """
        from ckptkit.io.crc32c import accelerated

        if not source.nbytes:
            return
        expected: Future[int] | int | None = crc32c if crc32c is not None else source.crc32c
        if not accelerated():  # the numpy CRC-32C is far slower than comparing bytes
            expected = None
        with self._lock:
            try:
                self._sources.open(source.path)
                whole = self._sources[source.path]
            except (OSError, ValueError):  # not mappable: the check after the write compares it
                return
            if expected is None:
                future = self._stream.submit(_same_bytes, whole, source, output)
            else:
                future = self._stream.submit(self._same_copy, whole, source, output, expected)
            self._pending.append((extent_key(source), extent_key(output), future))

    def _same_copy(
        self, source_map: mmap.mmap, source: RawExtent, output: RawExtent, expected: Future[int] | int
    ) -> bool:
        """Whether ``output`` holds ``source``'s bytes: its CRC-32C against ``expected``, then,
        where they differ, its bytes against the source's."""
        from ckptkit.io.crc32c import of_file

        try:
            want = expected.result() if isinstance(expected, Future) else expected
            with self._lock:
                fd = self._outputs.get(output.path)
                if fd is None:
                    fd = self._outputs[output.path] = os.open(output.path, os.O_RDONLY)
            if of_file(fd, output.offset, output.nbytes) == want:
                return True
        except (OSError, EOFError, CancelledError, CorruptCheckpointError):
            # Not vouched for: the check after the write compares it (a source the writer could
            # not read fails the write with the writer's own error).
            return False
        return _same_bytes(source_map, source, output)

    def close(self) -> None:
        self._sources.close()
        with self._lock:
            for fd in self._outputs.values():
                os.close(fd)
            self._outputs.clear()

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
