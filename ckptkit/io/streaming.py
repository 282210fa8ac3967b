"""Moving tensor bytes from a checkpoint into an output file, one tensor and one chunk at a time."""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

from ckptkit.core.model import Checkpoint, ProgressFn, RawExtent
from ckptkit.io.checksum import crc32, crc32_combine
from ckptkit.io.extents import copy_check
from ckptkit.io.workers import Executor, SerialExecutor, default_executor

CHUNK_BYTES = 16 * 1024 * 1024  # the piece of a large tensor one worker thread takes at a time
BUFFER_BYTES = 256 * 1024  # a copy through Python moves this much per read: small enough to stay in cache
PARALLEL_BYTES = 32 * 1024 * 1024  # smaller tensors are copied by the calling thread alone
_PAGE = 4096


class TensorCopier:
    """Copies tensors into open output files, without decoding those that lie as-is in a file.

    When a tensor's bytes lie as-is in a source file (:meth:`Checkpoint.raw_extent`), they are
    copied in chunks at explicit offsets, without decoding: in the kernel (``copy_file_range``)
    where the offsets allow it, else, and where the kernel refuses (another file system, no such
    call), through reused buffers, one per thread. A large tensor's chunks are dealt to the worker
    threads (:mod:`ckptkit.io.workers`). Other tensors are read as arrays and written out.

    The kernel copy is as fast as ``cp`` when source and destination sit at the same offset modulo
    the page size, which formats with fixed alignment rarely allow. At other offsets the kernel
    copies more slowly (about 2 GB/s against 3 GB/s for a 400 MB copy here). A copy through a
    reused 256 KiB buffer, which stays in the core's cache between the read and the write, was at
    least as fast (0.17-0.25 s against 0.18-0.36 s for 400 MB at load 3) and cost the same system
    CPU as the kernel copy on a busier machine (0.61-0.68 s against 0.60-0.80 s for 1.39 GB at load
    7-8), where a 1 MiB buffer cost twice as much and a 16 MiB one more still. So unaligned tensors
    go through the buffer unless ``kernel_copy_unaligned`` asks for the kernel copy.

    A CRC-32 asked for (``want_crc``, for zip members) is taken from the same buffer while its
    bytes are still in cache, so the source is read once: the kernel copy plus a checksum from a
    memory map of the source cost a third more here, most of it in page faults on the map. A
    large tensor's chunks are checksummed on the threads that copy them and the checksums
    combined.

    Copies fan out to the worker threads only from the main thread: a writer already running on a
    worker (one shard of several) copies with its own thread, so the workers are never nested.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, kernel_copy_unaligned: bool = False) -> None:
        self.kernel_copy_unaligned = kernel_copy_unaligned
        self._chunk = chunk_bytes
        self._bufs: list[bytearray] = []  # one per worker, made on first use and reused
        self._sources: dict[str, io.BufferedReader] = {}

    def close(self) -> None:
        for f in self._sources.values():
            f.close()
        self._sources.clear()

    def __enter__(self) -> TensorCopier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _source(self, path: str) -> io.BufferedReader:
        f = self._sources.get(path)
        if f is None:
            f = self._sources[path] = open(path, "rb")  # noqa: SIM115 - kept open across tensors
        return f

    def _buffer(self, index: int) -> memoryview:
        while len(self._bufs) <= index:
            self._bufs.append(bytearray(min(self._chunk, BUFFER_BYTES)))
        return memoryview(self._bufs[index])

    def copy(
        self,
        ckpt: Checkpoint,
        name: str,
        out: BinaryIO,
        want_crc: bool = False,
        progress: ProgressFn | None = None,
    ) -> tuple[int, int]:
        """Append tensor ``name`` to ``out``; returns (bytes written, CRC-32 or 0)."""
        extent = ckpt.raw_extent(name)
        if extent is not None:
            return self._copy_extent(extent, out, want_crc, progress, None)
        import numpy as np  # only a tensor that has to be decoded needs it

        data = np.ascontiguousarray(ckpt.read_tensor(name))
        view = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")  # type: ignore[arg-type]
        crc = 0
        for start in range(0, len(view), self._chunk):
            piece = view[start : start + self._chunk]
            if want_crc:
                crc = crc32(piece, crc)
            out.write(piece)
            if progress:
                progress(len(piece))
        return len(view), crc

    def copy_extent(
        self,
        extent: RawExtent,
        out: BinaryIO,
        progress: ProgressFn | None = None,
        crc32c: Future[int] | None = None,
    ) -> int:
        """Append the bytes ``extent`` names to ``out`` as they are; returns how many were written.

        ``crc32c``: the CRC-32C of ``extent``'s bytes, being computed from the source by the
        caller; a check of the copy (:func:`ckptkit.io.extents.checking_copies`) compares it
        with the copy's own instead of comparing the bytes of the two files.
        """
        return self._copy_extent(extent, out, False, progress, crc32c)[0]

    def _copy_extent(
        self,
        extent: RawExtent,
        out: BinaryIO,
        want_crc: bool,
        progress: ProgressFn | None,
        crc32c: Future[int] | None,
    ) -> tuple[int, int]:
        path, offset, nbytes = str(extent.path), extent.offset, extent.nbytes
        src = self._source(path).fileno()
        out.flush()
        dst_pos = out.tell()
        aligned = (offset - dst_pos) % _PAGE == 0
        kernel = hasattr(os, "copy_file_range") and not want_crc and (aligned or self.kernel_copy_unaligned)
        starts = range(0, nbytes, self._chunk)
        runner = self._runner(nbytes)
        # Interleaved, so that the threads move through the file together.
        groups = [list(starts[k :: runner.workers]) for k in range(min(runner.workers, len(starts)))]

        def copy_group(k: int) -> list[int]:
            crcs = []
            for start in groups[k]:
                n = min(self._chunk, nbytes - start)
                crcs.append(
                    self._copy_piece(path, src, out.fileno(), offset + start, dst_pos + start, n, kernel, want_crc, k)
                )
                if progress:
                    progress(n)
            return crcs

        results = runner.map(copy_group, range(len(groups)))
        crc = 0
        if want_crc:
            pairs = (zip(group, crcs, strict=True) for group, crcs in zip(groups, results, strict=True))
            by_start = {start: piece_crc for pieces in pairs for start, piece_crc in pieces}
            for start in starts:
                crc = crc32_combine(crc, by_start[start], min(self._chunk, nbytes - start))
        out.seek(dst_pos + nbytes)
        check = copy_check()
        name = getattr(out, "name", None)
        if check is not None and isinstance(name, str):
            check.copied(extent, RawExtent(Path(name), dst_pos, nbytes), crc32c)
        return nbytes, crc

    def _runner(self, nbytes: int) -> Executor:
        if nbytes < PARALLEL_BYTES or threading.current_thread() is not threading.main_thread():
            return SerialExecutor()
        return default_executor()

    def _copy_piece(
        self,
        path: str,
        src: int,
        dst: int,
        offset: int,
        dst_offset: int,
        nbytes: int,
        kernel: bool,
        want_crc: bool,
        worker: int,
    ) -> int:
        """Copy ``nbytes`` from ``offset`` in ``src`` to ``dst_offset`` in ``dst``; their CRC-32 or 0."""
        done = 0
        if kernel and nbytes >= _PAGE:
            while done < nbytes:
                try:
                    n = os.copy_file_range(src, dst, nbytes - done, offset + done, dst_offset + done)
                except OSError:  # across file systems (EXDEV) or not supported there: use the buffer
                    break
                if n <= 0:
                    break
                done += n
        crc = 0  # a kernel copy is never asked for a checksum
        if done == nbytes:
            return crc
        # Unaligned, checksummed, or where copy_file_range stops short (other file systems).
        buf = self._buffer(worker)
        remaining = nbytes - done
        while remaining:
            n = _pread_into(src, buf[: min(remaining, len(buf))], offset + done)
            if not n:
                raise EOFError(f"{path} ends {remaining} bytes before the tensor does")
            if want_crc:
                crc = crc32(buf[:n], crc)
            written = 0
            while written < n:
                written += _pwrite(dst, buf[written:n], dst_offset + done + written)
            done += n
            remaining -= n
        return crc


_SEEK_LOCK = threading.Lock()  # for systems without positional reads and writes


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.readv(fd, [buf])


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)
