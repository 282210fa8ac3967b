"""Moving tensor bytes from a checkpoint into an output file, one tensor and one chunk at a time."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from typing import TYPE_CHECKING, BinaryIO

from ckptkit.core.model import Checkpoint, ProgressFn, RawExtent
from ckptkit.io.checksum import crc32, parallel_crc32

if TYPE_CHECKING:
    pass

CHUNK_BYTES = 16 * 1024 * 1024
_PAGE = 4096


class TensorCopier:
    """Copies tensors into open output files through one reused buffer.

    When a tensor's bytes lie as-is in a source file (:meth:`Checkpoint.raw_extent`), they are
    copied without decoding: in the kernel (``copy_file_range``) when source and destination sit
    at the same offset modulo the page size, which is as fast as ``cp``; otherwise through the
    buffer, which reaches the same speed with no per-tensor allocation. Other tensors are read as
    arrays and written out.

    A CRC-32 asked for (``want_crc``, for zip members) does not keep bytes out of the kernel copy:
    it is computed from a memory map of the source, whose pages the copy has just brought in.

    ``kernel_copy_unaligned`` uses ``copy_file_range`` at any offsets, for a writer whose output
    offsets can never match the source's (page-aligned ONNX external data): measured on a busy
    machine, 2.3 GB took 1.4 s of CPU that way against 1.8 s through the buffer.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, kernel_copy_unaligned: bool = False) -> None:
        self.kernel_copy_unaligned = kernel_copy_unaligned
        self._buf = bytearray(chunk_bytes)
        self._sources: dict[str, io.BufferedReader] = {}
        self._maps: dict[str, mmap.mmap] = {}

    def close(self) -> None:
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a view of it is still referenced; the garbage collector unmaps it
                m.close()
        self._maps.clear()
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
            return self._copy_extent(str(extent.path), extent.offset, extent.nbytes, out, want_crc, progress)
        import numpy as np  # only a tensor that has to be decoded needs it

        data = np.ascontiguousarray(ckpt.read_tensor(name))
        view = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")  # type: ignore[arg-type]
        crc = 0
        for start in range(0, len(view), len(self._buf)):
            piece = view[start : start + len(self._buf)]
            if want_crc:
                crc = crc32(piece, crc)
            out.write(piece)
            if progress:
                progress(len(piece))
        return len(view), crc

    def copy_extent(self, extent: RawExtent, out: BinaryIO, progress: ProgressFn | None = None) -> int:
        """Append the bytes ``extent`` names to ``out`` as they are; returns how many were written."""
        return self._copy_extent(str(extent.path), extent.offset, extent.nbytes, out, False, progress)[0]

    def _copy_extent(
        self,
        path: str,
        offset: int,
        nbytes: int,
        out: BinaryIO,
        want_crc: bool,
        progress: ProgressFn | None,
    ) -> tuple[int, int]:
        src = self._source(path)
        out.flush()
        dst_pos = out.tell()
        aligned = (offset - dst_pos) % _PAGE == 0 or self.kernel_copy_unaligned
        if nbytes >= _PAGE and aligned and hasattr(os, "copy_file_range"):
            done = 0
            while done < nbytes:
                try:
                    n = os.copy_file_range(src.fileno(), out.fileno(), min(nbytes - done, 1 << 30), offset + done)
                except OSError:  # across file systems (EXDEV) or not supported there: use the buffer
                    break
                if n <= 0:
                    break
                done += n
                if progress:
                    progress(n)
            crc = self._source_crc(path, offset, done) if want_crc and done else 0
            if done == nbytes:
                out.seek(dst_pos + nbytes)
                return nbytes, crc
            # copy_file_range may stop short (other file systems); finish through the buffer.
            out.seek(dst_pos + done)
            offset, nbytes = offset + done, nbytes - done
            total = done + nbytes
        else:
            crc, total = 0, nbytes
        src.seek(offset)
        view = memoryview(self._buf)
        remaining = nbytes
        while remaining:
            n = src.readinto(view[: min(remaining, len(view))])
            if not n:
                raise EOFError(f"{path} ends {remaining} bytes before the tensor does")
            if want_crc:
                crc = crc32(view[:n], crc)
            out.write(view[:n])
            remaining -= n
            if progress:
                progress(n)
        return total, crc

    def _source_crc(self, path: str, offset: int, nbytes: int) -> int:
        m = self._maps.get(path)
        if m is None:
            m = self._maps[path] = mmap.mmap(self._source(path).fileno(), 0, access=mmap.ACCESS_READ)
        with memoryview(m) as whole, whole[offset : offset + nbytes] as view:
            return parallel_crc32(view)
