"""Reading HDF5 files lazily and safely: superblock check, link checks, dtypes, memory-mapped data.

h5py is imported inside functions so that detecting other formats never loads it. Contiguous,
unfiltered datasets (what Keras writes) are read through a memory map of the file and expose a
:class:`~ckptkit.core.model.RawExtent`, so converters copy their bytes without decoding them.
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from ckptkit.core import dtypes, limits
from ckptkit.core.errors import CorruptCheckpointError, MissingDependencyError, UnsupportedError
from ckptkit.core.model import RawExtent
from ckptkit.io.source import Source

if TYPE_CHECKING:
    import numpy as np

SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The attribute that marks a dataset whose element type HDF5 has no native form for (bfloat16,
# float8): the data is stored as an opaque type of the same width and this names the real dtype.
# Keras 3 does the same for bfloat16, so it reads these datasets back too.
DTYPE_ATTR = "dtype"


@contextlib.contextmanager
def hdf5_errors() -> Iterator[None]:
    """HDF5's complaints about a damaged file as ckptkit errors.

    h5py reports a broken object header, a link past the end of the file and the like as
    RuntimeError, OSError or KeyError, depending on the call.
    """
    try:
        yield
    except (RuntimeError, OSError, KeyError) as err:
        if isinstance(err, RecursionError):
            raise
        reason = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise CorruptCheckpointError(f"HDF5 cannot read it, it is damaged: {reason}") from None


def h5py_module() -> Any:
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError(
            "reading and writing Keras files needs h5py; pip install 'ckptkit[keras]'"
        ) from None
    return h5py


def signature_offset(head: bytes) -> int | None:
    """Where the HDF5 signature is in the first bytes (0, 512, 1024, 2048: after a user block)."""
    for offset in (0, 512, 1024, 2048):
        if head[offset : offset + 8] == SIGNATURE:
            return offset
    return None


def check_superblock(f: BinaryIO, size: int, start: int = 0) -> None:
    """Refuse a truncated file: the superblock records how long the file must be."""
    f.seek(start)
    head = f.read(2048 + 96)
    base = signature_offset(head)
    if base is None:
        raise CorruptCheckpointError("not an HDF5 file (no HDF5 signature at the start)")
    sb = head[base:]
    version = sb[8] if len(sb) > 8 else -1
    if version in (0, 1):
        sizes_at, body = 13, 24 if version == 0 else 28
        n = sb[sizes_at] if len(sb) > sizes_at else 0
        eof_at = body + 2 * n
    elif version in (2, 3):
        n = sb[9] if len(sb) > 9 else 0
        eof_at = 12 + 2 * n
    else:
        raise CorruptCheckpointError(f"unknown HDF5 superblock version {version}")
    if n not in (2, 4, 8) or len(sb) < eof_at + n:
        raise CorruptCheckpointError("the HDF5 superblock is damaged")
    stored_base = int.from_bytes(sb[eof_at - 2 * n : eof_at - n], "little")
    eof = int.from_bytes(sb[eof_at : eof_at + n], "little")
    needed = (stored_base or base) + eof
    if size - start < needed:
        raise CorruptCheckpointError(
            f"truncated: the HDF5 superblock says the file holds {needed} bytes, but it has {size - start}"
        )


class SliceFile(io.RawIOBase):
    """A read-only window onto part of a file, for h5py to open a member stored in a zip."""

    def __init__(self, f: Any, start: int, length: int) -> None:  # a file with readinto
        super().__init__()
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._length - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(view[:n]) or 0
        self._pos += got
        return got


def text(value: Any) -> str:
    """An HDF5 attribute value (bytes, str, numpy scalar) as text."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8")
    return str(value)


def attr_text(obj: Any, name: str) -> str | None:
    return text(obj.attrs[name]) if name in obj.attrs else None


def attr_strings(obj: Any, name: str) -> list[str] | None:
    """A list-of-strings attribute, also when Keras split it into ``name0``, ``name1``, ..."""
    import numpy as np

    if name in obj.attrs:
        chunks = [obj.attrs[name]]
    elif f"{name}0" in obj.attrs:
        chunks, i = [], 0
        while f"{name}{i}" in obj.attrs:
            chunks.append(obj.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    out: list[str] = []
    for chunk in chunks:
        values = np.atleast_1d(np.asarray(chunk))
        if values.size == 0:
            continue
        if values.dtype.kind not in "SUO":
            raise CorruptCheckpointError(f"attribute {name!r} of {obj.name} is not a list of names")
        out.extend(text(v) for v in values.reshape(-1))
    return out


def child(group: Any, name: str) -> Any:
    """``group[name]`` following hard links only: soft and external links could point anywhere."""
    h5py = h5py_module()
    node = group
    for part in name.strip("/").split("/"):
        if part not in node:
            raise KeyError(f"{node.name.rstrip('/')}/{part}")
        link = node.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link (to another file)" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise UnsupportedError(f"{node.name.rstrip('/')}/{part} is {kind}; ckptkit follows only hard links")
        node = node[part]
    return node


def link_names(group: Any) -> list[str]:
    """The names of a group's links; a name that is not UTF-8 text is a corrupt file here.

    h5py gives such names as bytes; Keras only ever writes text.
    """
    names = list(group.keys())
    for name in names:
        if not isinstance(name, str):
            raise CorruptCheckpointError(f"{group.name} holds a link named {name!r}, which is not UTF-8 text")
    return names


def is_group(obj: Any) -> bool:
    return isinstance(obj, h5py_module().Group)


def is_dataset(obj: Any) -> bool:
    return isinstance(obj, h5py_module().Dataset)


def walk_datasets(group: Any, _seen: set[Any] | None = None) -> Iterator[Any]:
    """Every dataset below ``group``, depth first in name order, through hard links only, each group once."""
    seen = _seen if _seen is not None else {group.id}
    if group.name.count("/") > limits.current().pickle_depth:
        raise CorruptCheckpointError(f"groups nest too deeply at {group.name}")
    for key in sorted(link_names(group)):
        node = child(group, key)
        if is_group(node):
            if node.id in seen:
                raise CorruptCheckpointError(f"{node.name} links back to a group already walked: a cycle")
            seen.add(node.id)
            yield from walk_datasets(node, seen)
        elif is_dataset(node):
            yield node


def dataset_dtype(ds: Any) -> dtypes.DType:
    """The ckptkit dtype of a dataset, including opaque data marked with a ``dtype`` attribute."""
    h5py = h5py_module()
    marked = attr_text(ds, DTYPE_ATTR)
    raw = ds.dtype
    if marked is not None:
        want = dtypes.by_name(marked)
        if raw.itemsize != want.itemsize or raw.kind not in "Vu":
            raise CorruptCheckpointError(
                f"dataset {ds.name} says it holds {want.name} but stores {raw} ({raw.itemsize} bytes per element)"
            )
        return want
    if isinstance(ds.id.get_type(), h5py.h5t.TypeOpaqueID):
        raise UnsupportedError(
            f"dataset {ds.name} holds opaque {raw.itemsize}-byte elements "
            f"without a {DTYPE_ATTR!r} attribute naming their type"
        )
    try:
        return dtypes.from_numpy(raw)
    except UnsupportedError:
        raise UnsupportedError(f"dataset {ds.name} holds {raw}, which is not a tensor type ckptkit knows") from None


def _plain_extent(ds: Any) -> tuple[int, int] | None:
    """(offset, nbytes) of a dataset's bytes when they lie contiguous, unfiltered and little-endian."""
    if ds.chunks is not None or ds.external or ds.is_virtual or ds.dtype.byteorder == ">":
        return None
    plist = ds.id.get_create_plist()
    if plist.get_layout() != h5py_module().h5d.CONTIGUOUS or plist.get_nfilters():
        return None
    offset = ds.id.get_offset()
    if offset is None:
        return None
    return offset, ds.id.get_storage_size()


def _check_stored(ds: Any, nbytes: int) -> None:
    """Refuse a dataset whose decompressed size is far beyond what the file stores for it.

    A compressed dataset of zeros, or one whose chunks were never written, declares gigabytes in
    a few bytes; reading it takes all of that memory.
    """
    stored = ds.id.get_storage_size()
    limit = limits.current().member_bytes
    if nbytes - stored > limit:
        raise CorruptCheckpointError(
            f"dataset {ds.name} holds {nbytes:,} bytes once decompressed but stores {stored:,}; reading it would "
            f"take more memory than ckptkit's limit of {limit:,} bytes for decompressed data; if the file is "
            f"trusted, raise the limit with {limits.Limits.env_name('member_bytes')}"
        )


# HDF5 keeps each dataset's object header beside its data, so listing a file seeks all over it:
# with 16 KB read ahead, listing a 33 MB Keras file of 16 datasets took as many requests as with
# 64 KB (~25) and fetched 0.4 MB instead of 1.5 MB; 4 KB needed twice the requests.
REMOTE_READAHEAD = 16 * 1024


class DataReader:
    """Reads datasets of one HDF5 file (or of a member lying uncompressed at ``start`` in a zip).

    ``path`` may be a :class:`~ckptkit.io.source.Source` at a URL: h5py then reads the file through a
    file object over range requests, and contiguous datasets come by range reads of their bytes.
    """

    def __init__(self, path: Path | Source, start: int = 0, length: int | None = None) -> None:
        self.source: Source | None = None
        if isinstance(path, Source) and path.remote:
            self.source = path
        elif isinstance(path, Source):
            assert path.local_path is not None
            path = path.local_path
        self.path: Path | None = path if isinstance(path, Path) else None
        self.start = start
        self._map: mmap.mmap | None = None
        if self.source is not None:
            self._file: BinaryIO = cast(BinaryIO, self.source.open(REMOTE_READAHEAD))
            size = self.source.size
        else:
            assert self.path is not None
            self._file = open(self.path, "rb")  # noqa: SIM115 - owned until close()
            size = self.path.stat().st_size
            if size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.length = size - start if length is None else length

    @property
    def name(self) -> str:
        """The file, for messages: its path or URL."""
        return self.source.name if self.source is not None else str(self.path)

    def open_h5(self) -> Any:
        """The h5py file, after checking the superblock against the file's length."""
        h5py = h5py_module()
        check_superblock(self._file, self.start + self.length, self.start)
        try:
            if self.start == 0 and self.path is not None:
                return h5py.File(self.path, "r", locking=False)
            return h5py.File(SliceFile(self._file, self.start, self.length), "r", locking=False)
        except OSError as err:
            raise CorruptCheckpointError(f"HDF5 cannot open it, it is damaged: {err}") from None

    def _located(self, ds: Any, nbytes: int) -> int | None:
        """Where a contiguous dataset of ``nbytes`` starts in the file, checked to end within it."""
        found = _plain_extent(ds)
        if found is None or found[1] != nbytes:
            return None
        offset, _ = found
        if offset + nbytes > self.length:
            raise CorruptCheckpointError(f"dataset {ds.name} ends past the end of the file: truncated?")
        return self.start + offset

    def extent(self, ds: Any, nbytes: int) -> RawExtent | None:
        offset = self._located(ds, nbytes)
        if offset is None or self.path is None:
            return None
        return RawExtent(self.path, offset, nbytes)

    def read(self, ds: Any, dtype: dtypes.DType, shape: tuple[int, ...]) -> np.ndarray:
        import numpy as np

        nbytes = math.prod(shape) * dtype.itemsize
        offset = self._located(ds, nbytes)
        if offset is not None and self._map is not None and nbytes:
            return np.frombuffer(self._map, dtype=dtype.numpy, count=math.prod(shape), offset=offset).reshape(shape)
        if offset is not None and self.source is not None and nbytes:
            out = np.empty(shape, dtype.numpy)
            self.source.read_into(offset, out.reshape(-1).view(np.uint8).data)
            return out
        _check_stored(ds, nbytes)
        data = np.empty(shape, ds.dtype.newbyteorder("=") if ds.dtype.byteorder == ">" else ds.dtype)
        if data.size:
            ds.read_direct(data)
        if dtype.numpy != data.dtype:
            data = (
                data.view(dtype.numpy)
                if data.dtype.itemsize == dtype.itemsize and data.dtype.kind in "Vu"
                else data.astype(dtype.numpy)
            )
        return data

    def close(self) -> None:
        self._map = None
        self._file.close()
