"""Reading a TensorFlow checkpoint (tensor bundle) lazily, without TensorFlow.

The index (``PREFIX.index``, a :mod:`table <.table>`) maps each tensor's key to a BundleEntryProto:
dtype, shape, which data file (``PREFIX.data-0000i-of-0000n``), offset, size and masked CRC-32C.
The first entry, keyed by the empty string, is the BundleHeaderProto (shard count, byte order,
format version). A partitioned variable's entry lists its slices instead of data; each slice is a
tensor of its own, keyed by an OrderedCode encoding of the variable's key and the slice
(``tensorflow/core/util/saved_tensor_slice_util.cc``), and is assembled into the full tensor when
read. Data files are memory-mapped: a tensor stored whole is a view of its file, and copies in the
kernel on convert. CRCs are not checked when reading (``ckptkit verify`` checks every one); a
tensor's raw extent carries its recorded CRC-32C, which a check after a copy compares with the copy's.
"""

from __future__ import annotations

import base64
import json
import math
import mmap
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptkit.core import limits
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CorruptCheckpointError, NoSuchFileError, UnsupportedError
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.io import crc32c
from ckptkit.io.source import Source, open_source

from . import dtypes
from .names import Naming, name_variables, plain_name
from .paths import INDEX_SUFFIX, Location, data_path, prefix_of
from .protos import BIG, BUNDLE_VERSION, LITTLE, Entry, Header, Slice, parse_entry, parse_header, parse_object_graph
from .table import Table

if TYPE_CHECKING:
    import numpy as np

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Metadata this reader sets; the writer reads them back to restore keys and the object graph.
KEYS_META = "tensorflow:keys"
GRAPH_META = "tensorflow:object_graph"
EXTRAS_META = "tensorflow:extras"
_MAX_SHARDS = 1 << 20


def slice_key(key: bytes, piece: Slice) -> bytes:
    """The key TensorFlow stores a slice under (``checkpoint::EncodeTensorNameSlice``): OrderedCode
    number 0 (so slice keys sort before every name), the variable's key, the rank, then each
    dimension's start and length (``tensorflow/core/lib/strings/ordered_code.cc``)."""
    escaped = re.sub(rb"[\x00\xff]", lambda m: b"\x00\xff" if m.group() == b"\x00" else b"\xff\x00", key)
    out = _number(0) + escaped + b"\x00\x01" + _number(len(piece.extents))
    for start, length in piece.extents:
        out += _signed(start) + _signed(length)
    return out


def _number(n: int) -> bytes:
    """OrderedCode's WriteNumIncreasing: a length byte, then the big-endian bytes."""
    size = (n.bit_length() + 7) // 8
    return bytes((size,)) + n.to_bytes(size, "big")


def _signed(n: int) -> bytes:
    """OrderedCode's WriteSignedNumIncreasing: sign and length bits, then the value, in 1 to 10 bytes."""
    x = ~n if n < 0 else n
    length = x.bit_length() // 7 + 1
    if length == 1:
        return bytes(((0x80 ^ n) & 0xFF,))
    raw = bytearray((n & ((1 << 80) - 1)).to_bytes(10, "big")[10 - length :])
    raw[0] ^= (0xFF << (8 - length)) & 0xFF if length <= 8 else 0xFF
    raw[1] ^= {9: 0x80, 10: 0xC0}.get(length, 0)
    return bytes(raw)


def read_strings(data: Any, offset: int, size: int, count: int) -> tuple[list[bytes], int]:
    """A string tensor's elements (varint lengths, their masked CRC-32C, the bytes) and the CRC over all."""
    limits.check("a string tensor", size, "member_bytes")
    buf = bytes(data[offset : offset + size])
    lengths = []
    pos = 0
    crc = 0
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= len(buf) or shift > 63:
                raise CorruptCheckpointError("a string tensor's lengths run past its data")
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        lengths.append(value)
        crc = crc32c.extend(crc, value.to_bytes(4 if value < 1 << 32 else 8, "little"))
    if pos + 4 > len(buf):
        raise CorruptCheckpointError("a string tensor ends before its length checksum")
    stored = buf[pos : pos + 4]
    if crc32c.unmask(int.from_bytes(stored, "little")) != crc:
        raise CorruptCheckpointError("a string tensor's lengths do not match their checksum")
    crc = crc32c.extend(crc, stored)
    pos += 4
    out = []
    for n in lengths:
        if pos + n > len(buf):
            raise CorruptCheckpointError("a string tensor's bytes run past its data")
        out.append(buf[pos : pos + n])
        pos += n
    for piece in out:
        crc = crc32c.extend(crc, piece)
    return out, crc


@dataclass(frozen=True)
class Stored:
    """Where a tensor's bytes are: a whole tensor in one data file, or slices assembled on reading."""

    key: bytes
    entry: Entry
    info: TensorInfo
    pieces: tuple[tuple[Slice, Entry], ...] = ()


class Bundle:
    """The parsed index: its header and every entry (raw), checked for order and limits."""

    def __init__(self, location: Location, source: Source | None = None) -> None:
        self.location = location
        size = source.size if source is not None else location.index.stat().st_size
        limits.check("the checkpoint index", size, "header_bytes")
        self.table = Table(source.read_at(0, size) if source is not None else location.index.read_bytes())
        self.entries: dict[bytes, bytes] = {}
        items = self.table.items()
        first = next(items, None)
        if first is None or first[0] != b"":
            raise CorruptCheckpointError("the index does not start with the bundle header (empty key)")
        self.header = parse_header(first[1])
        check_header(self.header)
        max_entries = limits.current().tensors
        for count, (key, value) in enumerate(items, 1):
            self.entries[key] = value
            if count > max_entries:
                raise limits.exceeded("the index's entry count", count, "tensors", "entries")

    def data_file(self, shard: int) -> Path:
        return data_path(self.location.prefix, shard, self.header.num_shards)


def check_header(header: Header) -> None:
    """Refuse a header ckptkit cannot read by: no data files, an unknown byte order, a newer format."""
    if not 1 <= header.num_shards <= _MAX_SHARDS:
        raise CorruptCheckpointError(f"the bundle header says {header.num_shards} data files")
    if header.endianness not in (LITTLE, BIG):
        raise CorruptCheckpointError(f"the bundle header gives byte order {header.endianness}, not little or big")
    if header.min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in header.bad_consumers:
        raise UnsupportedError(
            f"the checkpoint needs a reader of bundle format version {header.min_consumer} or later; ckptkit "
            f"reads version {BUNDLE_VERSION}"
        )


def entry_problem(
    what: str, entry: Entry, nbytes: int | None, shards: int, sizes: dict[int, int | None]
) -> tuple[str, str] | None:
    """What is wrong with a stored tensor's location, as (check, message), or ``None``.

    ``nbytes`` is the size its dtype and shape call for (``None`` for string tensors, whose size
    varies); ``sizes`` maps data file numbers to their sizes (``None``: missing), filled on demand.
    """
    if not 0 <= entry.shard_id < shards:
        return "tensorflow.entry", f"{what} is in data file {entry.shard_id}, but there are {shards}"
    if nbytes is not None and entry.size != nbytes:
        return "tensorflow.entry", f"{what}: the index gives {entry.size} bytes, but its dtype and shape take {nbytes}"
    have = sizes.get(entry.shard_id)
    if have is None:
        return "tensorflow.shard-missing", f"{what} is in data file {entry.shard_id}, which is missing"
    if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > have:
        return (
            "tensorflow.truncated",
            f"{what} lies at bytes {entry.offset}..{entry.offset + entry.size} of data file {entry.shard_id}, which "
            f"holds {have}: truncated?",
        )
    return None


class TensorFlowCheckpoint(Checkpoint):
    """A TensorFlow checkpoint; tensors are views of memory-mapped data files where stored whole."""

    format_name = "tensorflow"
    concurrent_reads = True

    def __init__(self, location: Location, source: Source | None = None) -> None:
        super().__init__(location.index if source is None else None)
        self.location = location
        self._maps: dict[int, mmap.mmap | None] = {}
        self._sizes: dict[int, int | None] = {}
        self._names: dict[int, str] = {}  # data file names by number, for the location column
        self._lock = threading.Lock()
        self.bundle = Bundle(location, source)
        self._stored: dict[str, Stored] = {}
        self._infos: list[TensorInfo] = []
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    # Building the tensor list.

    def _index(self) -> None:
        bundle = self.bundle
        keys: dict[str, tuple[bytes, Entry]] = {}
        unread: dict[str, str] = {}
        graph_bytes = None
        for key, value in bundle.entries.items():
            if key.startswith(b"\x00"):
                continue  # a slice, reached from its variable's entry
            entry = parse_entry(value)
            text = key.decode("utf-8", "surrogateescape")
            if text == OBJECT_GRAPH_KEY and entry.dtype == dtypes.DT_STRING and not entry.shape:
                limits.check("the object graph", entry.size, "header_bytes")
                graph_bytes = self._strings(key, entry)[0]
                continue
            if dtypes.to_ckptkit(entry.dtype) is None:
                what = dtypes.UNREAD.get(entry.dtype, f"of TensorFlow DataType {entry.dtype}")
                unread[text] = f"{what}, which ckptkit does not read"
                continue
            keys[text] = (key, entry)
        naming = Naming()
        if graph_bytes is not None:
            nodes = parse_object_graph(graph_bytes)
            scalars = {k for k, (_, e) in keys.items() if not e.shape and e.dtype in (3, 9)}
            naming = name_variables(nodes, list(keys), scalars)
            self.metadata[GRAPH_META] = base64.b64encode(graph_bytes).decode("ascii")
        renamed: dict[str, str] = {}
        extras_keys: dict[str, list[str]] = {}
        position = {text: (3, i, "") for i, text in enumerate(keys)}
        for text, (key, entry) in sorted(keys.items(), key=lambda kv: naming.order.get(kv[0], position[kv[0]])):
            if text in naming.extras:
                name = naming.extras[text]
                dtype = dtypes.to_ckptkit(entry.dtype)
                assert dtype is not None
                self._check_whole(name, entry, dtype.itemsize)
                value = self.read_key(key, entry).reshape(()).item()
                self.extras[name] = value
                extras_keys[name] = [text, dtype.name]
                continue
            name = naming.names.get(text, text)
            if name != text:
                renamed[name] = text
            self._add(name, key, entry)
        for text, why in unread.items():
            self.unsupported[naming.names.get(text, plain_name(text) if graph_bytes else text)] = (
                f"{why}; leave it out with --exclude"
            )
        if renamed:
            self.metadata[KEYS_META] = json.dumps(renamed, ensure_ascii=False)
        if extras_keys:
            self.metadata[EXTRAS_META] = json.dumps(extras_keys, ensure_ascii=False)
        self.optimizer_names = naming.optimizer

    def _add(self, name: str, key: bytes, entry: Entry) -> None:
        dtype = dtypes.to_ckptkit(entry.dtype)
        assert dtype is not None
        if entry.unknown_rank or any(d < 0 for d in entry.shape):
            raise CorruptCheckpointError(f"tensor {name!r} has no definite shape ({list(entry.shape)})")
        if not entry.slices:
            info = TensorInfo(name, dtype, entry.shape, self._where(entry))
            self._check_whole(name, entry, info.nbytes)
            self._stored[name] = Stored(key, entry, info)
        else:
            info = TensorInfo(name, dtype, entry.shape, f"{len(entry.slices)} slices")
            self._stored[name] = Stored(key, entry, info, self._pieces(name, key, entry, dtype))
        self._infos.append(info)

    def _where(self, entry: Entry) -> str:
        name = self._names.get(entry.shard_id)
        if name is None:
            name = self.bundle.data_file(entry.shard_id).name if entry.shard_id >= 0 else "?"
            self._names[entry.shard_id] = name
        return f"{name} @ {entry.offset}"

    def _check_whole(self, name: str, entry: Entry, nbytes: int) -> None:
        if 0 <= entry.shard_id < self.bundle.header.num_shards and entry.shard_id not in self._sizes:
            self._sizes[entry.shard_id] = self._data_size(entry.shard_id)
        problem = entry_problem(f"tensor {name!r}", entry, nbytes, self.bundle.header.num_shards, self._sizes)
        if problem is not None:
            message = problem[1]
            if problem[0] == "tensorflow.shard-missing":
                message = f"tensor {name!r} is in {self.bundle.data_file(entry.shard_id).name}, which is missing"
            raise CorruptCheckpointError(message)

    def _pieces(self, name: str, key: bytes, entry: Entry, dtype: DType) -> tuple[tuple[Slice, Entry], ...]:
        pieces, problems = plan_slices(f"tensor {name!r}", key, entry, self.bundle.entries)
        if problems:
            raise CorruptCheckpointError(problems[0])
        for piece, stored in pieces:
            shape = stored.shape
            self._check_whole(f"{name}[{_show(piece.bounds(entry.shape))}]", stored, math.prod(shape) * dtype.itemsize)
        return tuple(pieces)

    # Reading.

    def _map(self, shard: int) -> mmap.mmap | None:
        with self._lock:
            if shard not in self._maps:
                path = self.bundle.data_file(shard)
                with open(path, "rb") as f:
                    size = path.stat().st_size
                    self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            return self._maps[shard]

    def _data_size(self, shard: int) -> int | None:
        """The size of a data file, ``None`` when it is missing."""
        path = self.bundle.data_file(shard)
        return path.stat().st_size if path.is_file() else None

    def _data(self, entry: Entry) -> tuple[Any, int]:
        """The bytes holding ``entry`` and where it starts in them: the data file's map, here."""
        return self._map(entry.shard_id), entry.offset

    def _strings(self, key: bytes, entry: Entry) -> list[bytes]:
        if not 0 <= entry.shard_id < self.bundle.header.num_shards or entry.offset < 0 or entry.size < 0:
            raise CorruptCheckpointError(f"string tensor {key!r} has a bad location in the index")
        data, offset = self._data(entry)
        if data is None or offset + entry.size > len(data):
            raise CorruptCheckpointError(f"string tensor {key[:80]!r} lies past the end of its data file")
        return read_strings(data, offset, entry.size, math.prod(entry.shape))[0]

    def read_key(self, key: bytes, entry: Entry) -> np.ndarray:
        """A whole stored tensor (or slice) by its index entry, in native byte order."""
        import numpy as np

        dtype = dtypes.to_ckptkit(entry.dtype)
        assert dtype is not None
        count = math.prod(entry.shape)
        if count == 0:
            return np.zeros(entry.shape, dtype.numpy)
        data, offset = self._data(entry)
        if data is None:
            return np.zeros(entry.shape, dtype.numpy)
        np_dtype = dtype.numpy
        if self.bundle.header.endianness == BIG and np_dtype.itemsize > 1:
            arr = np.frombuffer(data, np_dtype.newbyteorder(">"), count, offset)
            return arr.astype(np_dtype).reshape(entry.shape)
        return np.frombuffer(data, np_dtype, count, offset).reshape(entry.shape)

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        stored = self._stored[name]
        if not stored.pieces:
            return self.read_key(stored.key, stored.entry)
        out = np.empty(stored.info.shape, stored.info.dtype.numpy)
        for piece, entry in stored.pieces:
            window = tuple(slice(a, b) for a, b in piece.bounds(stored.info.shape))
            out[window] = self.read_key(b"", entry)
        return out

    def raw_extent(self, name: str) -> RawExtent | None:
        stored = self._stored[name]
        if stored.pieces or (self.bundle.header.endianness == BIG and stored.info.dtype.itemsize > 1):
            return None
        entry = stored.entry
        return RawExtent(self.bundle.data_file(entry.shard_id), entry.offset, entry.size, crc32c.unmask(entry.crc32c))

    def stored(self, name: str) -> Stored:
        """Where tensor ``name`` is kept, for writers that copy its bytes and CRC as they are."""
        return self._stored[name]

    def data_files(self) -> list[Path]:
        """Every data file the index names."""
        return [self.bundle.data_file(i) for i in range(self.bundle.header.num_shards)]

    def structure(self) -> dict[str, Any] | None:
        if not self.optimizer_names:
            return None
        model = [ti.name for ti in self._infos if ti.name not in self.optimizer_names]
        optimizer = [ti.name for ti in self._infos if ti.name in self.optimizer_names]
        return {
            "kind": "tensorflow",
            "sections": [
                {"title": "variables", "groups": _groups(model)},
                {"title": "optimizer state", "groups": _groups(optimizer)},
            ],
        }

    def close(self) -> None:
        # Arrays handed out may still view the maps; the garbage collector closes those.
        self._maps.clear()


class RemoteTensorFlowCheckpoint(TensorFlowCheckpoint):
    """A TensorFlow checkpoint at a URL (its ``.index``): the index read whole (it is checked against
    the header limit first), each tensor by a range read of the data file beside it."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._folder = source.name.rsplit("/", 1)[0]
        self._data_sources: dict[int, Source | None] = {}
        name = Path(source.basename)
        prefix = prefix_of(name)
        if prefix is None or not source.basename.endswith(INDEX_SUFFIX):
            raise CorruptCheckpointError(f"name the checkpoint's {INDEX_SUFFIX} file (or its prefix) at the URL")
        super().__init__(Location(prefix, name), source)
        self.url = source.name

    def _data_source(self, shard: int) -> Source | None:
        with self._lock:
            if shard not in self._data_sources:
                try:
                    self._data_sources[shard] = open_source(f"{self._folder}/{self.bundle.data_file(shard).name}")
                except NoSuchFileError:
                    self._data_sources[shard] = None
            return self._data_sources[shard]

    def _data_size(self, shard: int) -> int | None:
        source = self._data_source(shard)
        return None if source is None else source.size

    def _data(self, entry: Entry) -> tuple[Any, int]:
        source = self._data_source(entry.shard_id)
        if source is None:
            return None, 0
        data = source.read_at(entry.offset, entry.size, keep=False)
        if len(data) < entry.size:
            raise CorruptCheckpointError(f"the data file {source.basename} ends inside a tensor: truncated?")
        return data, 0

    def raw_extent(self, name: str) -> RawExtent | None:
        return None

    @property
    def sources(self) -> list[Source]:
        """The index and the data files: the files a manifest lists."""
        found = [self._data_source(i) for i in range(self.bundle.header.num_shards)]
        return [self.source, *(s for s in found if s is not None)]


def plan_slices(
    what: str, key: bytes, entry: Entry, entries: dict[bytes, bytes]
) -> tuple[list[tuple[Slice, Entry]], list[str]]:
    """The stored slices of a partitioned tensor, and what is wrong with them: a slice outside the
    tensor, missing from the index, stored with another dtype or shape, overlapping another, or
    slices that leave part of the tensor uncovered."""
    pieces: list[tuple[Slice, Entry]] = []
    problems: list[str] = []
    boxes: list[list[tuple[int, int]]] = []
    covered = 0
    for piece in entry.slices:
        try:
            bounds = piece.bounds(entry.shape)
        except CorruptCheckpointError as err:
            problems.append(f"{what}: {err.message}")
            continue
        raw = entries.get(slice_key(key, piece))
        if raw is None:
            problems.append(f"{what}: the index lacks its slice {_show(bounds)}")
            continue
        try:
            stored = parse_entry(raw)
        except CorruptCheckpointError as err:
            problems.append(f"{what}: slice {_show(bounds)}: {err.message}")
            continue
        shape = tuple(stop - start for start, stop in bounds)
        if stored.dtype != entry.dtype or stored.shape != shape or stored.slices:
            problems.append(
                f"{what}: slice {_show(bounds)} is stored as {list(stored.shape)} of DataType {stored.dtype}, not "
                f"{list(shape)} of {entry.dtype}"
            )
            continue
        clash = next((b for b in boxes if all(a < d and c < e for (a, e), (c, d) in zip(bounds, b, strict=True))), None)
        if clash is not None:
            problems.append(f"{what}: slices {_show(bounds)} and {_show(clash)} overlap")
            continue
        boxes.append(bounds)
        covered += math.prod(shape)
        pieces.append((piece, stored))
    if not problems and covered != math.prod(entry.shape):
        problems.append(f"{what}: its slices hold {covered} of its {math.prod(entry.shape)} elements")
    return pieces, problems


def _groups(names: list[str]) -> list[dict[str, Any]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rsplit("/", 1)[0] if "/" in name else "", []).append(name)
    return [{"name": g, "kind": "", "tensors": t} for g, t in groups.items()]


def _show(bounds: list[tuple[int, int]]) -> str:
    return ",".join(f"{a}:{b}" for a, b in bounds)
