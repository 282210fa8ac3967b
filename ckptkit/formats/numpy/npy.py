"""numpy's own files: ``.npy`` (one array) and ``.npz`` (a zip of ``.npy`` members, ``np.savez``).

An ``.npy`` file is a magic string, a version, a header length, a header (the text of a Python
dict: ``descr``, ``fortran_order``, ``shape``) padded to 64 bytes, then the raw array; see
``numpy/lib/format.py``. An array of Python objects stores a pickle instead of raw bytes.
Numeric arrays are read in place (a memory map of the file, or of the stored zip member);
compressed ``.npz`` members are inflated one tensor at a time.
"""

from __future__ import annotations

import ast
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from ckptkit.core import limits
from ckptkit.core.dtypes import DTYPES, from_numpy
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsafeCheckpointError, UnsupportedError
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.io.source import Source
from ckptkit.io.unpickler import ObjectsUnpickler
from ckptkit.io.ziparchive import ZIP_ERRORS, open_zip, read_member

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"\x93NUMPY"
NPY_SUFFIX = ".npy"
ROOT_NAME = "array"  # the tensor name of a lone .npy file
MAX_HEADER = 1024 * 1024
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_PLAIN_KINDS = "biufc"
# The dtypes numpy's own types hold (ml_dtypes' bfloat16 and float8 have no .npy name).
NUMPY_DTYPES = frozenset(d.name for d in DTYPES if not d.needs_ml_dtypes)


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header says; ``offset`` is where the data (or the pickle) starts."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_header(head: bytes, what: str) -> NpyHeader:
    """The header at the start of ``head`` (which must hold all of it)."""
    import numpy as np

    if not head.startswith(MAGIC) or len(head) < 10:
        raise CorruptCheckpointError(f"{what} does not start with numpy's magic string")
    major = head[6]
    if major == 1:
        (length,), start = struct.unpack_from("<H", head, 8), 10
    elif major in (2, 3):
        if len(head) < 12:
            raise CorruptCheckpointError(f"{what}: the .npy header is cut short")
        (length,), start = struct.unpack_from("<I", head, 8), 12
    else:
        raise UnsupportedError(f"{what} is a .npy file of version {major}.{head[7]}; ckptkit reads versions 1 to 3")
    if length > MAX_HEADER:
        raise CorruptCheckpointError(f"{what}: the .npy header claims {length:,} bytes, over {MAX_HEADER:,}")
    if len(head) < start + length:
        raise CorruptCheckpointError(f"{what}: the .npy header is cut short: truncated?")
    text = head[start : start + length].decode("utf-8" if major == 3 else "latin-1", "replace")
    try:
        # literal_eval builds only literals (numpy reads the header the same way); nesting is bounded by its parser.
        fields = ast.literal_eval(text)
        if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
            raise ValueError("keys")
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, KeyError):
        raise CorruptCheckpointError(f"{what}: the .npy header {text[:120]!r} is not understood") from None
    shape = fields["shape"]
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise CorruptCheckpointError(f"{what}: the .npy shape {shape!r} is not a tuple of sizes")
    if not isinstance(fields["fortran_order"], bool):
        raise CorruptCheckpointError(f"{what}: fortran_order is {fields['fortran_order']!r}, not a boolean")
    return NpyHeader(dtype, shape, fields["fortran_order"], start + length)


def read_header(f: BinaryIO, what: str) -> NpyHeader:
    """The header of the ``.npy`` stream ``f`` (positioned at its start)."""
    head = f.read(12)
    if len(head) >= 10 and head[6] == 1:
        length = struct.unpack_from("<H", head, 8)[0] + 10
    elif len(head) >= 12:
        length = struct.unpack_from("<I", head, 8)[0] + 12
    else:
        length = 0
    if length > MAX_HEADER + 12:
        raise CorruptCheckpointError(f"{what}: the .npy header claims {length:,} bytes, over {MAX_HEADER:,}")
    return parse_header(head + f.read(max(0, length - len(head))), what)


def unsupported_reason(header: NpyHeader) -> str | None:
    """Why ckptkit does not read this array as a tensor, or ``None`` if it does."""
    dt = header.dtype
    if dt.hasobject:
        return (
            "an array of Python objects, stored as a pickle (np.save with allow_pickle), which ckptkit does not "
            "read; save it as a numeric array"
        )
    if dt.kind not in _PLAIN_KINDS or dt.fields is not None or dt.subdtype is not None:
        return f"a numpy {dt} array, which ckptkit does not read as a tensor; save it as a numeric array"
    try:
        from_numpy(dt)
    except UnsupportedError as err:
        return err.message
    return None


def scan_objects(data: BinaryIO, strict: bool) -> ObjectsUnpickler:
    """The pickle of an object array, unpickled with the allow-list (items built, nothing run).

    The unpickler is returned, its findings complete, even when the pickle cannot be parsed to
    the end; that error is then in ``failure``.
    """
    unpickler = ObjectsUnpickler(data, strict=strict)
    unpickler.failure = None
    try:
        unpickler.load()
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # a hostile pickle can make the unpickler raise anything
        unpickler.failure = err
    return unpickler


@dataclass(frozen=True)
class _Array:
    name: str
    header: NpyHeader
    member: zipfile.ZipInfo | None  # None: the .npy file itself
    start: int  # absolute offset of the data when stored in place, else -1


class NumpyCheckpoint(Checkpoint):
    """A ``.npy`` file (one tensor, named ``array``) or an ``.npz`` archive (a tensor per member)."""

    format_name = "numpy"
    concurrent_reads = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - owned by the checkpoint until close()
        self._map: mmap.mmap | None = None
        self._zip: zipfile.ZipFile | None = None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self._arrays = self._index(size)
            if size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self.close()
            raise
        self._list()

    def _list(self) -> None:
        self._infos = [
            TensorInfo(a.name, from_numpy(a.header.dtype), a.header.shape, a.member.filename if a.member else "npy")
            for a in self._arrays.values()
        ]

    def _index(self, size: int) -> dict[str, _Array]:
        """The arrays of the open file (one code path for local and remote files)."""
        head = self._file.read(4)
        self._file.seek(0)
        if head != b"PK\x03\x04":
            self.metadata["numpy:file"] = "npy"
            header = read_header(self._file, "the file")
            return self._keep({}, ROOT_NAME, header, None, header.offset, size)
        self.metadata["numpy:file"] = "npz"
        zf = self._zip = open_zip(self._file, size)
        arrays: dict[str, _Array] = {}
        for info in zf.infolist():
            if not info.filename.endswith(NPY_SUFFIX):
                raise UnsupportedError(f"the archive holds {info.filename!r}, which is not a .npy member")
            name = info.filename.removesuffix(NPY_SUFFIX)
            if name in arrays or name in self.unsupported:
                raise UnsafeCheckpointError(
                    f"the archive holds two members named {info.filename}; zip readers disagree about which one counts"
                )
            with zf.open(info) as member:
                header = read_header(member, info.filename)  # type: ignore[arg-type]
            start = -1
            if info.compress_type == zipfile.ZIP_STORED:
                start = _data_offset(self._file, info) + header.offset
            self._keep(arrays, name, header, info, start, size)
        return arrays

    def _keep(
        self, arrays: dict[str, _Array], name: str, header: NpyHeader, member: zipfile.ZipInfo | None, start: int,
        size: int,
    ) -> dict[str, _Array]:  # fmt: skip
        why = unsupported_reason(header)
        if why is not None:
            if header.dtype.hasobject:
                self._scan_objects(name, member, start)
            self.unsupported[name] = why
            return arrays
        stored = member.file_size - header.offset if member is not None else size - header.offset
        if stored < header.nbytes:
            where = member.filename if member is not None else "the file"
            raise CorruptCheckpointError(
                f"tensor {name!r} needs {header.nbytes:,} bytes, but {where} holds {max(stored, 0):,} after its "
                "header: truncated?"
            )
        arrays[name] = _Array(name, header, member, start)
        return arrays

    def _scan_objects(self, name: str, member: zipfile.ZipInfo | None, start: int) -> None:
        # An object array is a pickle: refuse it as verify would if it calls anything.
        if member is None:
            self._file.seek(start)
            data = self._file.read(limits.current().pickle_bytes)
        else:
            assert self._zip is not None
            raw = read_member(self._zip, member, "pickle_bytes")
            data = raw[parse_header(raw[: MAX_HEADER + 12], member.filename).offset :]
        try:
            scan_objects(BytesIO(data), strict=True)
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"array {name!r}: {err.message}") from None

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        arr = self._arrays[name]
        h = arr.header
        if arr.start >= 0:
            if self._map is None:
                raise CorruptCheckpointError(f"cannot read tensor {name!r}: the checkpoint was closed")
            flat = np.frombuffer(self._map, h.dtype, count=math.prod(h.shape), offset=arr.start)
        else:
            assert self._zip is not None and arr.member is not None
            raw = read_member(self._zip, arr.member)
            flat = np.frombuffer(raw, h.dtype, count=math.prod(h.shape), offset=h.offset)
        return _shaped(flat, h)

    def raw_extent(self, name: str) -> RawExtent | None:
        arr = self._arrays[name]
        h = arr.header
        if arr.start < 0 or self.path is None or not h.dtype.isnative or (h.fortran and len(h.shape) > 1):
            return None
        return RawExtent(self.path, arr.start, h.nbytes)

    def close(self) -> None:
        self._map = None
        if self._zip is not None:
            self._zip.close()
        self._file.close()


def _shaped(flat: np.ndarray, h: NpyHeader) -> np.ndarray:
    """A flat array of the file's values in the header's shape and order, native byte order."""
    import numpy as np

    out = flat.reshape(h.shape, order="F" if h.fortran else "C")
    if h.fortran and len(h.shape) > 1:
        out = np.ascontiguousarray(out)
    if not h.dtype.isnative:
        out = out.astype(h.dtype.newbyteorder("="))
    return out


class RemoteNumpyCheckpoint(NumpyCheckpoint):
    """A ``.npy`` or ``.npz`` file at a URL: headers (and an archive's directory) by exact range reads,
    arrays stored in place by a range read each, compressed members through the archive. The same
    checks and limits as a local file (object arrays scanned, never unpickled)."""

    def __init__(self, source: Source) -> None:
        Checkpoint.__init__(self, None)
        self.source = source
        self.url = source.name
        self._file = cast(BinaryIO, source.ranges())
        self._map = None
        self._zip = None
        try:
            self._arrays = self._index(source.size)
        except BaseException:
            self.close()
            raise
        self._list()
        # compressed members are read through the one archive file: one thread at a time then
        self.concurrent_reads = all(a.start >= 0 for a in self._arrays.values())

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        arr = self._arrays[name]
        if arr.start < 0:
            return super().read_tensor(name)
        h = arr.header
        data = self.source.read_at(arr.start, h.nbytes, keep=False)
        if len(data) < h.nbytes:
            raise CorruptCheckpointError(f"tensor {name!r}: the file ends inside its data")
        return _shaped(np.frombuffer(data, h.dtype, count=math.prod(h.shape)), h)

    def raw_extent(self, name: str) -> RawExtent | None:
        return None


def _data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CorruptCheckpointError(f"member {info.filename}: no local file header at byte {info.header_offset}")
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[9:11]
    return int(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)


def is_npz(f: BinaryIO, size: int) -> bool:
    """A zip whose members are all ``.npy`` files (what ``np.savez`` writes)."""
    try:
        with open_zip(f, size) as zf:
            names = zf.namelist()
    except (CkptkitError, *ZIP_ERRORS):
        return False
    return bool(names) and all(n.endswith(NPY_SUFFIX) for n in names)


def npy_header_bytes(arr: np.ndarray) -> bytes:
    """The ``.npy`` header for a C-ordered array (version 1.0, or 2.0 when the header needs it)."""
    import numpy as np

    text = repr({"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": arr.shape})
    for version, fmt in ((1, "<H"), (2, "<I")):
        prefix = len(MAGIC) + 2 + struct.calcsize(fmt)
        pad = -(prefix + len(text) + 1) % 64
        body = (text + " " * pad + "\n").encode("latin-1")
        if version == 2 or len(body) < 65536:
            return MAGIC + bytes([version, 0]) + struct.pack(fmt, len(body)) + body
    raise AssertionError("unreachable")


__all__ = [
    "MAGIC",
    "NUMPY_DTYPES",
    "NpyHeader",
    "NumpyCheckpoint",
    "is_npz",
    "npy_header_bytes",
    "parse_header",
    "scan_objects",
]
