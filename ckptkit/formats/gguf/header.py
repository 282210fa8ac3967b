"""The GGUF header (versions 2 and 3), parsed and checked in one place for reading and for ``verify``.

Layout (little-endian), from https://github.com/ggml-org/ggml/blob/master/docs/gguf.md: the magic
``GGUF``, a ``uint32`` version, ``uint64`` tensor and metadata counts, the metadata as key/typed
value pairs (strings are a ``uint64`` length then UTF-8 bytes; arrays an element type, a ``uint64``
count, then the elements, possibly arrays themselves), then per tensor its name, ``uint32`` number
of dimensions, ``uint64`` sizes innermost first, ``uint32`` ggml type and ``uint64`` offset into the
data section. The data section starts at the end of the tensor infos rounded up to the alignment
(``general.alignment``, 32 by default); every tensor offset is a multiple of it.

The header is attacker-controlled: every count, length and size is compared with the bytes left
in the file and with ckptkit's limits (:mod:`ckptkit.core.limits`) before anything is allocated
or looped over. Problems go to a :class:`~ckptkit.core.findings.ProblemSink`: a reader stops at the
first, ``verify`` collects them all.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core import dtypes, limits
from ckptkit.core.errors import UnsupportedError
from ckptkit.core.findings import ProblemSink
from ckptkit.core.model import TensorInfo

FETCH_AHEAD = 64 * 1024
FIRST_READ = 4096  # what detection read already: a small header costs no further request
Reader = Callable[[int, int], bytes]

if TYPE_CHECKING:
    pass

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"

# Finding ids, documented in README's table of verify checks.
MAGIC_CHECK = "gguf.magic"
VERSION_CHECK = "gguf.version"
COUNTS = "gguf.counts"
METADATA = "gguf.metadata"
ALIGNMENT = "gguf.alignment"
TENSOR = "gguf.tensor"
OFFSET = "gguf.offset"
OVERLAP = "gguf.overlap"
TRUNCATED = "gguf.truncated"

# Metadata value types: id -> (name, struct code or "" for string/array).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VALUE_TYPES: dict[int, tuple[str, str]] = {
    UINT8: ("uint8", "B"), INT8: ("int8", "b"), UINT16: ("uint16", "H"), INT16: ("int16", "h"),
    UINT32: ("uint32", "I"), INT32: ("int32", "i"), FLOAT32: ("float32", "f"), BOOL: ("bool", "?"),
    STRING: ("string", ""), ARRAY: ("array", ""), UINT64: ("uint64", "Q"), INT64: ("int64", "q"),
    FLOAT64: ("float64", "d"),
}  # fmt: skip


@dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: ``block`` elements stored in ``size`` bytes; ``dtype`` when it is a plain element type."""

    id: int
    name: str
    block: int
    size: int
    dtype: str | None = None  # ckptkit dtype name of unquantized types

    def nbytes(self, numel: int) -> int:
        return numel // self.block * self.size


# The ggml types of the GGUF spec (ggml.h ``enum ggml_type``): facts of the file format, needed to
# size every tensor without importing gguf-py. Dequantizing is in dequant.py (common types) and gguf-py (the rest).
_K = 256
GGML_TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        GGMLType(0, "F32", 1, 4, "float32"),
        GGMLType(1, "F16", 1, 2, "float16"),
        GGMLType(2, "Q4_0", 32, 18),
        GGMLType(3, "Q4_1", 32, 20),
        GGMLType(6, "Q5_0", 32, 22),
        GGMLType(7, "Q5_1", 32, 24),
        GGMLType(8, "Q8_0", 32, 34),
        GGMLType(9, "Q8_1", 32, 40),
        GGMLType(10, "Q2_K", _K, 4 + _K // 16 + _K // 4),
        GGMLType(11, "Q3_K", _K, 2 + _K // 4 + _K // 8 + 12),
        GGMLType(12, "Q4_K", _K, 4 + _K // 2 + 12),
        GGMLType(13, "Q5_K", _K, 4 + _K // 2 + _K // 8 + 12),
        GGMLType(14, "Q6_K", _K, 2 + _K // 2 + _K // 4 + _K // 16),
        GGMLType(15, "Q8_K", _K, 4 + _K + _K // 8),
        GGMLType(16, "IQ2_XXS", _K, 2 + _K // 4),
        GGMLType(17, "IQ2_XS", _K, 2 + _K // 4 + _K // 32),
        GGMLType(18, "IQ3_XXS", _K, 2 + _K // 4 + _K // 8),
        GGMLType(19, "IQ1_S", _K, 2 + _K // 8 + _K // 16),
        GGMLType(20, "IQ4_NL", 32, 18),
        GGMLType(21, "IQ3_S", _K, 2 + _K // 4 + _K // 8 + _K // 32 + 4),
        GGMLType(22, "IQ2_S", _K, 2 + _K // 4 + _K // 16),
        GGMLType(23, "IQ4_XS", _K, 4 + _K // 2 + _K // 64),
        GGMLType(24, "I8", 1, 1, "int8"),
        GGMLType(25, "I16", 1, 2, "int16"),
        GGMLType(26, "I32", 1, 4, "int32"),
        GGMLType(27, "I64", 1, 8, "int64"),
        GGMLType(28, "F64", 1, 8, "float64"),
        GGMLType(29, "IQ1_M", _K, _K // 8 + _K // 16 + _K // 32),
        GGMLType(30, "BF16", 1, 2, "bfloat16"),
        GGMLType(34, "TQ1_0", _K, 2 + 4 * 13),
        GGMLType(35, "TQ2_0", _K, 2 + 64),
        GGMLType(39, "MXFP4", 32, 17),
        GGMLType(40, "NVFP4", 64, 36),
        GGMLType(41, "Q1_0", 128, 18),
    )
}
GGML_BY_NAME = {t.name: t for t in GGML_TYPES.values()}
MAX_DIMS = 4  # GGML_MAX_DIMS

# Smallest encodings, to bound counts by the bytes left before reading them.
_MIN_KV = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # empty name, no dimensions, type, offset


@dataclass
class Field:
    """One metadata entry: its key, value type (and element type for arrays) and value.

    An array's value is a numpy array (numbers) or a list (strings, or nested arrays as
    ``(item_type, value)`` pairs), its element type in ``item_type``.
    """

    key: str
    type: int
    value: Any
    item_type: int | None = None  # element type of an array


@dataclass
class TensorEntry:
    """A tensor as the header lists it."""

    info: TensorInfo  # numpy (C-order) shape; float32 for quantized types, read dequantized
    ggml: GGMLType
    dims: tuple[int, ...]  # as stored: innermost first
    offset: int  # relative to the data section
    nbytes: int  # stored bytes


@dataclass
class Header:
    """What a checked header says."""

    version: int
    alignment: int
    data_start: int
    fields: list[Field] = field(default_factory=list)
    tensors: list[TensorEntry] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)

    def field(self, key: str) -> Field | None:
        return next((f for f in self.fields if f.key == key), None)


def sniff(head: bytes, path: Path) -> bool:
    """Whether ``head`` starts with the GGUF magic (any version: a wrong one is a corrupt GGUF)."""
    return head[:4] == MAGIC


class _Stop(Exception):
    """Parsing cannot go on (the problem went to the sink already)."""


class _Cursor:
    """Reads little-endian fields from a buffer, never past ``end``."""

    def __init__(self, buf: Any, end: int, sink: ProblemSink, more: Reader | None = None) -> None:
        self.buf = buf
        self.pos = 0
        self.end = end
        self.sink = sink
        self.limits = limits.current()
        self.more = more  # fetches bytes past ``buf`` (a remote file): read on demand, never beyond the header

    def fetched(self, stop: int) -> None:
        """Make sure ``buf`` holds the bytes before ``stop`` (within the file, as checked already)."""
        if self.more is not None and stop > len(self.buf):
            have = len(self.buf)
            self.buf += self.more(have, max(stop - have, FETCH_AHEAD))

    def left(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            self.sink.error(
                TRUNCATED, f"the file ends inside the header: {what} needs {n:,} bytes, {self.left():,} are left"
            )
            raise _Stop
        if self.pos + n > self.limits.header_bytes:
            self.sink.error(COUNTS, str(limits.exceeded("the header", self.pos + n, "header_bytes")))
            raise _Stop
        self.fetched(self.pos + n)

    def unpack(self, code: str, what: str) -> Any:
        n = struct.calcsize("<" + code)
        self.need(n, what)
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.unpack("Q", f"the length of {what}")
        self.need(n, f"{what} ({n:,} bytes)")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.sink.error(METADATA, f"{what} is not valid UTF-8")
            return raw.decode("utf-8", "replace")

    def count(self, what: str, each: int, field_name: str | None = None, unit: str = "entries") -> int:
        """A ``uint64`` count of items at least ``each`` bytes long, bounded by the bytes left."""
        n = self.unpack("Q", what)
        if field_name is not None and n > getattr(self.limits, field_name):
            self.sink.error(COUNTS, str(limits.exceeded(what, n, field_name, unit)))
            raise _Stop
        if n * each > self.left():
            self.sink.error(COUNTS, f"{what} is {n:,}, which cannot fit in the {self.left():,} bytes left in the file")
            raise _Stop
        return n

    def value(self, vtype: int, what: str, depth: int) -> Any:
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            return self.array(what, depth + 1)
        spec = VALUE_TYPES.get(vtype)
        if spec is None:
            self.sink.error(METADATA, f"{what} has value type {vtype}, which GGUF does not define")
            raise _Stop
        return self.unpack(spec[1], what)

    def array(self, what: str, depth: int) -> tuple[int, Any]:
        import numpy as np

        if depth > self.limits.pickle_depth:
            self.sink.error(COUNTS, str(limits.exceeded(f"the nesting of {what}", depth, "pickle_depth", "levels")))
            raise _Stop
        item = self.unpack("I", f"the element type of {what}")
        spec = VALUE_TYPES.get(item)
        if spec is None:
            self.sink.error(METADATA, f"{what} is an array of value type {item}, which GGUF does not define")
            raise _Stop
        code = spec[1]
        each = struct.calcsize("<" + code) if code else (8 if item == STRING else 12)
        n = self.count(f"the length of {what}", each, unit="elements")
        if code:
            end = self.pos + n * each
            self.fetched(end)
            arr = np.frombuffer(self.buf, dtype=np.dtype("<" + code), count=n, offset=self.pos).copy()
            self.pos = end
            return item, arr
        return item, [self.value(item, f"{what}[{i}]", depth) for i in range(n)]


def parse(buf: Any, size: int, sink: ProblemSink, more: Reader | None = None) -> Header | None:
    """The header of the GGUF file held in ``buf`` (bytes or a memory map), ``size`` bytes long, checked.

    For a file not at hand (a URL), ``buf`` holds its first bytes and ``more(offset, n)`` reads
    further ones: the header is fetched as the parse reaches it, :data:`FETCH_AHEAD` bytes at
    least at a time, so listing costs the header and at most that much more.
    ``None`` when a problem stops the parse (only a collecting sink lets that return).
    """
    cur = _Cursor(bytearray(buf) if more is not None else buf, size, sink, more)
    try:
        return _parse(cur, size, sink)
    except _Stop:
        return None


def _parse(cur: _Cursor, size: int, sink: ProblemSink) -> Header:
    cur.need(8, "the magic and version")
    if bytes(cur.buf[:4]) != MAGIC:
        sink.error(MAGIC_CHECK, "the file does not start with the GGUF magic")
        raise _Stop
    cur.pos = 4
    version = cur.unpack("I", "the version")
    if version not in VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        if swapped in VERSIONS:
            sink.error(
                VERSION_CHECK, "the file is a big-endian GGUF, which ckptkit does not read", kind=UnsupportedError
            )
        elif version == 1:
            sink.error(VERSION_CHECK, "GGUF version 1 (32-bit counts) is obsolete; convert it with llama.cpp first",
                       kind=UnsupportedError)  # fmt: skip
        else:
            sink.error(VERSION_CHECK, f"GGUF version {version} is unknown; ckptkit reads versions 2 and 3")
        raise _Stop
    n_tensors = cur.count("the tensor count", _MIN_TENSOR_INFO, "tensors", "tensors")
    n_kv = cur.count("the metadata count", _MIN_KV)
    header = Header(version=version, alignment=DEFAULT_ALIGNMENT, data_start=0)
    seen: set[str] = set()
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.unpack("I", f"the value type of {key!r}")
        what = f"metadata {key!r}"
        if vtype == ARRAY:
            item, value = cur.array(what, 1)
            entry = Field(key, vtype, value, item)
        else:
            entry = Field(key, vtype, cur.value(vtype, what, 0))
        if key in seen:
            sink.error(METADATA, f"metadata {key!r} is given twice")
        seen.add(key)
        header.fields.append(entry)
    align = header.field(ALIGNMENT_KEY)
    if align is not None:
        if align.type != UINT32 or not (align.value > 0 and align.value & (align.value - 1) == 0):
            sink.error(ALIGNMENT, f"{ALIGNMENT_KEY} must be a uint32 power of two, not {align.value!r}")
        else:
            header.alignment = int(align.value)
    names: set[str] = set()
    for i in range(n_tensors):
        tensor = _tensor(cur, i, header, sink)
        if tensor is None:
            continue
        if tensor.info.name in names:
            sink.error(TENSOR, f"tensor {tensor.info.name!r} is listed twice", tensor.info.name)
            continue
        names.add(tensor.info.name)
        header.tensors.append(tensor)
    header.data_start = cur.pos + (-cur.pos % header.alignment)
    _check_extents(header, size, sink)
    return header


def _tensor(cur: _Cursor, index: int, header: Header, sink: ProblemSink) -> TensorEntry | None:
    name = cur.string(f"the name of tensor #{index}")
    n_dims = cur.unpack("I", f"the dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        sink.error(TENSOR, f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}", name)
        raise _Stop  # its remaining fields cannot be located reliably
    cur.need(8 * n_dims + 12, f"the fields of tensor {name!r}")
    dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.pos)
    cur.pos += 8 * n_dims
    type_id = cur.unpack("I", "")
    offset = cur.unpack("Q", "")
    ggml = GGML_TYPES.get(type_id)
    if ggml is None:
        sink.error(TENSOR, f"tensor {name!r} has ggml type {type_id}, which ckptkit does not know", name,
                   kind=UnsupportedError)  # fmt: skip
        return None
    if any(d > 2**62 for d in dims) or math.prod(dims) > 2**62:
        sink.error(TENSOR, f"tensor {name!r}: sizes {list(dims)} are not a possible tensor", name)
        return None
    row = dims[0] if dims else 1  # a tensor of no dimensions holds one element: no block of a quantized type
    if row % ggml.block:
        sink.error(TENSOR, f"tensor {name!r}: its rows of {row} are not whole {ggml.name} blocks of {ggml.block}",
                   name)  # fmt: skip
        return None
    if offset % header.alignment:
        sink.error(OFFSET, f"tensor {name!r}: offset {offset} is not a multiple of the alignment {header.alignment}",
                   name)  # fmt: skip
    dtype = dtypes.by_name(ggml.dtype or "float32")
    numel = math.prod(dims)
    info = TensorInfo(name, dtype, tuple(reversed(dims)), f"offset {offset}, {ggml.name}")
    return TensorEntry(info, ggml, tuple(dims), offset, ggml.nbytes(numel))


def _check_extents(header: Header, size: int, sink: ProblemSink) -> None:
    data_len = size - header.data_start
    if data_len < 0 and header.tensors:
        sink.error(TRUNCATED, f"the data section would start at {header.data_start:,}, past the end of the file")
    kept: list[TensorEntry] = []
    for entry in header.tensors:
        if entry.offset + entry.nbytes > data_len:
            sink.error(
                TRUNCATED,
                f"tensor {entry.info.name!r} needs bytes {entry.offset:,} to {entry.offset + entry.nbytes:,} of the "
                f"data "
                f"section, which holds {max(data_len, 0):,}",
                entry.info.name,
            )
            continue
        kept.append(entry)
    previous: TensorEntry | None = None
    for entry in sorted(kept, key=lambda e: e.offset):
        if previous is not None and entry.nbytes and entry.offset < previous.offset + previous.nbytes:
            sink.tolerated(
                OVERLAP, f"tensor {entry.info.name!r} overlaps tensor {previous.info.name!r}", entry.info.name
            )
        if entry.nbytes and (previous is None or entry.offset + entry.nbytes > previous.offset + previous.nbytes):
            previous = entry
    header.tensors = kept
