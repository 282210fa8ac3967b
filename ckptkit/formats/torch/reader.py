"""A lazy reader for ``torch.save`` files: tensors listed from the pickle, read from a memory map
(a local file) or by range requests (a file at a URL, :class:`RemoteTorchCheckpoint`)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from ckptkit.core import limits
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.formats.torch.archive import ZIP_MAGIC, Archive, StorageSpan, read_legacy, read_zip
from ckptkit.formats.torch.structure import flatten
from ckptkit.io.source import Source
from ckptkit.io.unpickler import PickleFinding, TensorRecord

if TYPE_CHECKING:
    import numpy as np

ROOT_KEY = "torch:root"
FORMAT_KEY = "torch:format"


class TorchCheckpoint(Checkpoint):
    """A ``torch.save`` file (zip or legacy). Listing reads only the pickle; tensors come from a map.

    ``findings`` lists the globals of the pickle that are not allow-listed (unknown classes kept as
    placeholders). ``metadata["torch:format"]`` is ``"zip"`` or ``"legacy"``;
    ``metadata["torch:root"]`` is set when the saved object is not a dict (``"tensor"`` for a bare
    tensor, which is then named ``tensor``).
    """

    format_name = "torch"
    concurrent_reads = True  # tensors are read from a memory map, never through the shared file position

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file = open(path, "rb")  # noqa: SIM115 - owned by the checkpoint until close()
        self._map: mmap.mmap | None = None
        try:
            self._load()
        except BaseException:
            self._file.close()
            raise

    def _load(self) -> None:
        self._take(read_archive(self._file, strict=True))
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def _take(self, archive: Archive) -> None:
        """List the archive's tensors (one code path for local and remote files)."""
        self.findings: list[PickleFinding] = archive.findings
        self._big_endian = archive.big_endian
        tree = flatten(archive.root)
        limits.check("the tensor count", len(tree.tensors), "tensors", "tensors")
        self.aliases = tree.aliases
        self.extras = tree.extras
        self.unsupported = tree.unsupported
        self.metadata[FORMAT_KEY] = archive.kind
        if tree.root != "dict":
            self.metadata[ROOT_KEY] = tree.root
        if self._big_endian:
            self.metadata["torch:byteorder"] = "big"
        self._infos: list[TensorInfo] = []
        self._records: dict[str, tuple[TensorRecord, int]] = {}  # name -> (record, storage start in file)
        for name, rec in tree.tensors.items():
            try:
                span = archive.locate(rec.storage.key)
            except CkptkitError as err:
                raise type(err)(f"tensor {name!r}: {err.message}") from None
            self._records[name] = (rec, check_bounds(name, rec, span))
            where = span.record + (f" +{rec.offset * rec.dtype.itemsize}" if rec.offset else "")
            self._infos.append(TensorInfo(name, rec.dtype, rec.shape, where))

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        rec, start = self._records[name]
        if self._map is None:
            raise CkptkitError(f"cannot read tensor {name!r}: the checkpoint was closed", self.path)
        if not rec.is_contiguous():
            _check_expansion(name, rec)
        return record_array(self._map, rec, start, self._big_endian)

    def raw_extent(self, name: str) -> RawExtent | None:
        rec, start = self._records[name]
        if self._big_endian or not rec.is_raw() or self.path is None:
            return None
        itemsize = rec.dtype.itemsize
        return RawExtent(self.path, start + rec.offset * itemsize, rec.numel * itemsize)

    def close(self) -> None:
        # Arrays handed out may still view the map; leave it to the garbage collector then.
        self._map = None
        self._file.close()


class RemoteTorchCheckpoint(TorchCheckpoint):
    """A ``torch.save`` file at a URL. A zip's central directory and ``data.pkl`` come by exact
    range reads (nothing else of the file is fetched to list it), each tensor by range reads of
    the bytes of its record it spans; a legacy file's pickles are read through a read-ahead stream.
    The same unpickler, checks and limits as a local file."""

    def __init__(self, source: Source) -> None:
        Checkpoint.__init__(self, None)
        self.source = source
        self.url = source.name
        self._map = None
        zipped = source.read_at(0, len(ZIP_MAGIC)) == ZIP_MAGIC
        with source.ranges() if zipped else source.open() as f:
            self._take(read_archive(cast(BinaryIO, f), strict=True, size=source.size))

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        rec, start = self._records[name]
        if not rec.is_contiguous():
            _check_expansion(name, rec)
        itemsize = rec.dtype.itemsize
        first = rec.offset * itemsize
        buf = np.empty(max(rec.storage_span() - rec.offset, 0) * itemsize if rec.numel else 0, np.uint8)
        if buf.size:
            self.source.read_into(start + first, buf.data)
        # record_array looks for the tensor at start + offset: the buffer begins there
        return record_array(buf, rec, -first, self._big_endian)

    def raw_extent(self, name: str) -> RawExtent | None:
        return None

    def close(self) -> None:
        pass


def open_remote_torch(source: Source, options: object) -> Checkpoint:
    """Open a ``torch.save`` file at a URL for lazy reading by range requests."""
    return RemoteTorchCheckpoint(source)


def record_array(buf: mmap.mmap | np.ndarray, rec: TensorRecord, start: int, big_endian: bool = False) -> np.ndarray:
    """The tensor ``rec`` describes, C-contiguous, from a map whose storage bytes begin at ``start``.

    A contiguous little-endian tensor is a view of the map; others are copied.
    """
    import numpy as np

    dtype = rec.dtype.numpy
    if rec.numel == 0:
        return np.zeros(rec.shape, dtype)
    itemsize = rec.dtype.itemsize
    first = start + rec.offset * itemsize
    if rec.is_contiguous():
        arr = np.frombuffer(buf, dtype, count=rec.numel, offset=first).reshape(rec.shape)
    else:
        flat = np.frombuffer(buf, dtype, count=rec.storage_span() - rec.offset, offset=first)
        strides = tuple(s * itemsize for s in rec.stride)
        view = np.lib.stride_tricks.as_strided(flat, rec.shape, strides, writeable=False)
        arr = np.ascontiguousarray(view)
    if big_endian:
        arr = _byteswapped(arr)
    if rec.conj:
        arr = np.conj(arr)
    if rec.neg:
        arr = np.negative(arr)
    return arr


def read_archive(f: BinaryIO, strict: bool = True, size: int | None = None) -> Archive:
    """The archive of an open ``torch.save`` file, zip or legacy (``size``: the file's, when ``f``
    has no descriptor)."""
    if size is None:
        size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(4)
    f.seek(0)
    if head == ZIP_MAGIC:
        return read_zip(f, size, strict)
    return read_legacy(f, size, strict)


def check_bounds(name: str, rec: TensorRecord, span: StorageSpan) -> int:
    """The file offset where the tensor's storage starts, after checking the tensor fits in it."""
    storage = rec.storage
    if storage.view_offset + storage.nbytes > span.nbytes:
        raise CorruptCheckpointError(
            f"tensor {name!r}: its storage needs {storage.view_offset + storage.nbytes} bytes, "
            f"but {span.record} holds {span.nbytes}"
        )
    reach = rec.storage_span() * rec.dtype.itemsize
    if reach > storage.nbytes:
        raise CorruptCheckpointError(
            f"tensor {name!r} ({rec.dtype.name} {list(rec.shape)}, offset {rec.offset}, stride {list(rec.stride)}) "
            f"reaches byte {reach} of a {storage.nbytes}-byte storage ({span.record})"
        )
    return span.offset + storage.view_offset


def _check_expansion(name: str, rec: TensorRecord) -> None:
    """Refuse a view whose copy would take far more memory than the bytes it reads (zero strides)."""
    itemsize = rec.dtype.itemsize
    extra = (rec.numel - (rec.storage_span() - rec.offset)) * itemsize
    limit = limits.current().expanded_bytes
    if extra > limit:
        raise CorruptCheckpointError(
            f"tensor {name!r} ({rec.dtype.name} {list(rec.shape)}, stride {list(rec.stride)}) repeats its data; "
            f"reading it takes {rec.numel * itemsize:,} bytes of memory for "
            f"{(rec.storage_span() - rec.offset) * itemsize:,} bytes in the file, over ckptkit's limit of "
            f"{limit:,} extra bytes; if the file is trusted, raise the limit with "
            f"{limits.Limits.env_name('expanded_bytes')}"
        )


def _byteswapped(arr: np.ndarray) -> np.ndarray:
    import numpy as np

    if arr.dtype.type.__module__ == "numpy":
        return arr.byteswap()  # numpy swaps each half of a complex number on its own
    width = np.dtype(f"u{arr.dtype.itemsize}")
    return arr.view(width).byteswap().view(arr.dtype)


def scan_findings(path: str | Path) -> list[PickleFinding]:
    """Every global a ``torch.save`` file's pickle names that is not allow-listed, without refusing any.

    Meant for an audit (``verify``): dangerous callables come back as ``"error"`` findings instead
    of raising :class:`~ckptkit.core.errors.UnsafeCheckpointError`, and nothing is ever called.
    """
    with open(path, "rb") as f:
        return read_archive(f, strict=False).findings
