"""One pass over every tensor's bytes, on several threads: content hashes, value checks, file hashes.

Tensors whose bytes lie as-is in a file (:meth:`Checkpoint.raw_extent`) are read through a shared
read-only memory map, so any thread can take any of them. The others go through the reader's
``read_tensor``, one at a time in a single lane, because readers need not be thread-safe. Work is
handed out largest first so that the threads finish together. hashlib and numpy release the GIL
on large buffers, so threads run in parallel; how many is :mod:`ckptkit.io.workers`'s policy.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ckptkit.core import errors
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CkptkitError
from ckptkit.core.model import Checkpoint, ProgressFn, TensorInfo
from ckptkit.hashing.tensors import tensor_hasher, update_from
from ckptkit.io.workers import default_executor

if TYPE_CHECKING:
    import numpy as np

    from ckptkit.core.values import ValueCounts

# numpy is imported only where values are checked or a reader's array is hashed: hashing the
# tensors of a file they lie in as-is (every safetensors file) needs no array library, and its
# import is a tenth of a second of start-up.

CHUNK_BYTES = 1024 * 1024  # a multiple of every item size; what a value check takes at once
SPLIT_BYTES = 64 * 1024 * 1024  # value checks (not hashes) of larger tensors are split across threads

# What a broken file makes readers raise; anything else is a bug in ckptkit and propagates.
READ_ERRORS: tuple[type[BaseException], ...] = (CkptkitError, *errors.READ_ERRORS)


@dataclass
class TensorResult:
    """What one pass learned about one tensor; ``error`` says why it could not be read."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    sha256: str | None = None
    values: ValueCounts | None = None
    error: str | None = None

    @property
    def all_zero(self) -> bool:
        return self.values is not None and not self.values.nonzero and self.error is None and 0 not in self.shape


@dataclass
class ScanResult:
    tensors: dict[str, TensorResult]  # in the checkpoint's order
    files: dict[Path, str]  # file -> sha256


class _Maps:
    """Read-only maps of the files tensors lie in, one per file and thread.

    Each thread maps the file itself: threads faulting pages into one shared map slowed each
    other down here (two threads hashing one map ran barely faster than one), their own maps not.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[tuple[memoryview, mmap.mmap | None]] = []
        self._lock = threading.Lock()

    def view(self, path: Path) -> memoryview:
        mine: dict[Path, memoryview] = self._local.__dict__.setdefault("maps", {})
        if path not in mine:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            mine[path] = memoryview(mm) if mm is not None else memoryview(b"")
            with self._lock:
                self._all.append((mine[path], mm))
        return mine[path]

    def close(self) -> None:
        with self._lock:
            for view, mm in self._all:
                view.release()
                if mm is not None:
                    mm.close()
            self._all.clear()


def _chunks(data: memoryview, size: int) -> Iterator[memoryview]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class _Pass:
    """Feeds one tensor's bytes to a hasher and a value checker, as asked."""

    def __init__(self, want_hash: bool, want_values: bool, progress: ProgressFn | None) -> None:
        self.want_hash = want_hash
        self.want_values = want_values
        self.progress = progress

    def consume(self, ti: TensorInfo, data: memoryview) -> tuple[str | None, ValueCounts | None]:
        hasher = tensor_hasher(ti.dtype, ti.shape) if self.want_hash else None
        checker = None
        if self.want_values:
            from ckptkit.core.values import ValueChecker

            checker = ValueChecker(ti.dtype)
        # Chunks are a whole number of elements: CHUNK_BYTES is a multiple of every item size.
        for chunk in _chunks(data, CHUNK_BYTES):
            if hasher is not None:
                hasher.update(chunk)
            if checker is not None:
                checker.update(chunk)
            if self.progress:
                self.progress(len(chunk))
        return (hasher.hexdigest() if hasher else None), (checker.counts if checker else None)


def _array_bytes(ti: TensorInfo, array: np.ndarray) -> memoryview:
    """The little-endian C-order bytes of what a reader returned, after checking it is what the header said."""
    import numpy as np

    if tuple(array.shape) != ti.shape or array.dtype.itemsize != ti.dtype.itemsize:
        raise CkptkitError(
            f"the reader returned {array.dtype} {list(array.shape)}, the header says {ti.dtype.name} {list(ti.shape)}"
        )
    le = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return le.reshape(-1).view(np.uint8).data if le.size else memoryview(b"")


def scan(
    ckpt: Checkpoint,
    *,
    hashes: bool = False,
    values: bool = False,
    files: Sequence[Path] = (),
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> ScanResult:
    """Read every tensor of ``ckpt`` once, hashing (``hashes``) and checking values (``values``).

    ``files`` are hashed whole (plain SHA-256) in the same pass. A tensor that cannot be read gets
    ``error`` set instead of raising, so one bad tensor does not hide the others. ``workers`` is an
    explicit request for threads (see :func:`ckptkit.io.workers.worker_count`).
    """
    # Always on threads, whatever ckpt.concurrent_reads says: reads that cannot overlap share one lane.
    runner = default_executor(workers=workers)
    scanner = _Scanner(ckpt, _Pass(hashes, values, progress))
    jobs = scanner.plan(split=not hashes, files=files)
    try:
        # Threads take the next job as they free up, so handing them out largest first balances the load.
        largest_first = [run for _size, run in sorted(jobs, key=lambda job: -job[0])]
        runner.map(lambda run: run(), largest_first)
    finally:
        scanner.maps.close()
    return scanner.result(files)


Job = tuple[int, Callable[[], None]]  # (bytes it reads, what to run)


class _Scanner:
    """The jobs of one scan and where their results go."""

    def __init__(self, ckpt: Checkpoint, tensor_pass: _Pass) -> None:
        self.ckpt = ckpt
        self.tensor_pass = tensor_pass
        self.maps = _Maps()
        self.infos = list(ckpt.tensor_infos())
        self.results = {ti.name: TensorResult(ti.name, ti.dtype, ti.shape) for ti in self.infos}
        self.partial: dict[str, list[ValueCounts]] = {}  # value checks of tensors split across jobs
        self.lane: list[TensorInfo] = []  # tensors only the reader can produce, read one at a time
        self.file_hashes: dict[Path, str] = {}

    def plan(self, split: bool, files: Sequence[Path]) -> list[Job]:
        jobs: list[Job] = []
        for ti in self.infos:
            try:
                extent = self.ckpt.raw_extent(ti.name)
                if extent is not None:
                    _check_extent(ti, extent.path, extent.offset, extent.nbytes)
            except READ_ERRORS as err:
                self.results[ti.name].error = _describe(err)
                continue
            if extent is None:
                self.lane.append(ti)
            elif split and extent.nbytes > SPLIT_BYTES:
                self.partial[ti.name] = []
                for start in range(0, extent.nbytes, SPLIT_BYTES):
                    n = min(SPLIT_BYTES, extent.nbytes - start)
                    jobs.append((n, _bind(self.run_extent, ti, extent.path, extent.offset + start, n, False)))
            else:
                jobs.append(
                    (extent.nbytes, _bind(self.run_extent, ti, extent.path, extent.offset, extent.nbytes, True))
                )
        if self.lane:
            jobs.append((sum(ti.nbytes for ti in self.lane), self.run_lane))
        jobs.extend((path.stat().st_size, _bind(self.run_file, path)) for path in files)
        return jobs

    def run_extent(self, ti: TensorInfo, path: Path, offset: int, nbytes: int, whole: bool) -> None:
        try:
            view = self.maps.view(path)
        except OSError as err:
            self.results[ti.name].error = _describe(err)
            return
        digest, counts = self.tensor_pass.consume(ti, view[offset : offset + nbytes])
        if whole:
            self.results[ti.name].sha256, self.results[ti.name].values = digest, counts
        elif counts is not None:
            self.partial[ti.name].append(counts)

    def run_lane(self) -> None:
        for ti in self.lane:
            try:
                data = _array_bytes(ti, self.ckpt.read_tensor(ti.name))
                self.results[ti.name].sha256, self.results[ti.name].values = self.tensor_pass.consume(ti, data)
            except READ_ERRORS as err:
                self.results[ti.name].error = _describe(err)

    def run_file(self, path: Path) -> None:
        h = hashlib.sha256()
        update_from(h, self.maps.view(path), progress=self.tensor_pass.progress)
        self.file_hashes[path] = h.hexdigest()

    def result(self, files: Sequence[Path]) -> ScanResult:
        for name, parts in self.partial.items():
            from ckptkit.core.values import ValueCounts

            total = ValueCounts()
            for counts in parts:
                total.add(counts)
            self.results[name].values = total
        return ScanResult(self.results, {p: self.file_hashes[p] for p in files})


def _bind(func: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: func(*args)


def _check_extent(ti: TensorInfo, path: Path, offset: int, nbytes: int) -> None:
    if nbytes != ti.nbytes:
        raise CkptkitError(f"its data holds {nbytes} bytes, but {ti.dtype.name} {list(ti.shape)} needs {ti.nbytes}")
    size = path.stat().st_size
    if offset < 0 or offset + nbytes > size:
        raise CkptkitError(
            f"its data should lie at bytes {offset}..{offset + nbytes} of {path.name}, "
            f"but the file has only {size} bytes: truncated"
        )


def _describe(err: BaseException) -> str:
    if isinstance(err, CkptkitError):
        return err.message
    return f"{type(err).__name__}: {err}"
