"""torch.distributed.checkpoint (DCP) folders, read as one checkpoint without torch.

What ``torch.distributed.checkpoint.save`` writes (``torch/distributed/checkpoint/metadata.py``,
``filesystem.py``): a folder holding ``.metadata`` and one or more ``__<rank>_<n>.distcp`` files.

- ``.metadata`` pickles a ``Metadata`` dataclass: for each fully qualified name, either a
  ``TensorStorageMetadata`` (dtype, global shape, and the chunks the ranks saved: offsets and sizes
  in the global tensor) or a ``BytesStorageMetadata`` (a non-tensor object); ``storage_data`` maps
  each (name, chunk offsets) to a byte range of a ``.distcp`` file.
- Each byte range is a complete ``torch.save`` archive of that chunk (or of the object).

ckptkit reads ``.metadata`` with the torch format's allow-listed unpickler, DCP's dataclasses
allowed as plain records; torch, and so ``torch.distributed``, is never imported. Each chunk's
archive is parsed in place (its directory and small pickle only) and its bytes are viewed through
a memory map: a tensor saved whole is a view of the file (and copies in the kernel on convert); a
tensor that ranks saved in pieces is assembled when it is read, holding that one tensor in memory.
Non-tensor entries become extras.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, cast

from ckptkit.core.dtypes import dtype_names
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsupportedError
from ckptkit.core.format import Format
from ckptkit.core.model import Checkpoint, RawExtent, TensorInfo
from ckptkit.formats.torch.archive import ZIP_MAGIC, read_zip
from ckptkit.formats.torch.reader import check_bounds, record_array
from ckptkit.formats.torch.structure import flatten, unsupported_reason
from ckptkit.formats.torch.writer import NOT_IN_TORCH
from ckptkit.io.paths import check_relative_name
from ckptkit.io.unpickler import Marker, SafeUnpickler, TensorRecord, UnsupportedTensor, load

if TYPE_CHECKING:
    import numpy as np

METADATA_NAME = ".metadata"
DATA_SUFFIX = ".distcp"
MAX_METADATA_BYTES = 1 << 30
_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed._shard.checkpoint.metadata",  # torch < 2.0
)


# --- DCP's dataclasses, as plain records -------------------------------------------------------


class Record:
    """An instance of one of DCP's dataclasses: only its pickled field values, in ``values``."""

    fields: ClassVar[tuple[str, ...]] = ()
    values: dict[str, Any]

    def __new__(cls, *args: Any) -> Record:
        obj = super().__new__(cls)
        obj.values = dict(zip(cls.fields, args, strict=False))
        return obj

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.values.update(state)
        elif isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                self.values.update(part or {})
        elif isinstance(state, tuple) and len(state) <= len(self.fields):
            self.values.update(zip(self.fields, state, strict=False))
        else:
            raise CorruptCheckpointError(f"{type(self).__name__} has state {state!r:.100}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _record(name: str, *fields: str) -> type[Record]:
    return cast(type[Record], type(name, (Record,), {"fields": fields, "__module__": __name__}))


_RECORDS: dict[str, type[Record]] = {
    r.__name__: r
    for r in (
        _record("Metadata", "state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"),
        _record("TensorStorageMetadata", "properties", "size", "chunks"),
        _record("ChunkStorageMetadata", "offsets", "sizes"),
        _record("BytesStorageMetadata"),
        _record("TensorProperties", "dtype", "layout", "requires_grad", "memory_format", "pin_memory"),
        _record("MetadataIndex", "fqn", "offset", "index"),
        _record("StorageMeta", "checkpoint_id", "save_id", "load_id", "modules"),
        _record("_StorageInfo", "relative_path", "offset", "length", "transform_descriptors"),
        _record("_MEM_FORMAT_ENCODING", "value"),
    )
}
_PATH_RECORD = _record("Path", "part")
_PATHS = {("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")}


class MetadataUnpickler(SafeUnpickler):
    """The torch unpickler, with DCP's dataclasses (and pathlib paths) allowed as plain records."""

    takes_state = (Record,)

    def find_class(self, module: str, name: str) -> Any:
        if module in _MODULES and name in _RECORDS:
            return _RECORDS[name]
        if (module, name) in _PATHS:
            return _PATH_RECORD
        return super().find_class(module, name)


# --- The checkpoint ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One saved piece of a tensor: where it sits in the tensor and where its archive lies."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int  # the archive's byte range in ``file``
    length: int


class DcpCheckpoint(Checkpoint):
    """A DCP folder. Tensors are listed from ``.metadata``; chunk archives are parsed when read."""

    format_name = "dcp"
    concurrent_reads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._maps: dict[str, mmap.mmap] = {}
        self._files: list[BinaryIO] = []
        self._parsed: dict[Chunk, tuple[TensorRecord, int]] = {}
        try:
            self._load(folder)
        except BaseException:
            self.close()
            raise

    def _load(self, folder: Path) -> None:
        meta = _read_metadata(folder / METADATA_NAME)
        entries = meta.get("state_dict_metadata")
        storage = meta.get("storage_data")
        if not isinstance(entries, dict) or not isinstance(storage, dict):
            raise CorruptCheckpointError(".metadata lacks state_dict_metadata or storage_data")
        places = _places(storage)
        self.metadata["dcp:version"] = str(meta.get("version") or "")
        self._infos: list[TensorInfo] = []
        self._chunks: dict[str, list[Chunk]] = {}
        for fqn, entry in entries.items():
            if not isinstance(fqn, str):
                raise CorruptCheckpointError(f".metadata names an entry {fqn!r}, not a string")
            if isinstance(entry, _RECORDS["BytesStorageMetadata"]):
                self._read_object(fqn, places.get((fqn, None)))
            elif isinstance(entry, _RECORDS["TensorStorageMetadata"]):
                self._add_tensor(fqn, entry, places)
            else:
                raise CorruptCheckpointError(
                    f"entry {fqn!r} of .metadata is {entry!r:.80}, not tensor or bytes metadata"
                )

    def _add_tensor(self, fqn: str, entry: Record, places: Mapping[tuple[str, Any], Record]) -> None:
        marker = _dtype_marker(fqn, entry.get("properties"))
        shape = _ints(entry.get("size"), f"tensor {fqn!r} size")
        if marker.dtype is None:  # a torch dtype ckptkit cannot hold (complex32, ...): listed apart
            self.unsupported[fqn] = unsupported_reason(UnsupportedTensor(marker.name, shape))
            return
        dtype = marker.dtype
        chunks = []
        covered = 0
        for c in entry.get("chunks") or []:
            offsets = _ints(c.get("offsets"), f"tensor {fqn!r} chunk offsets")
            sizes = _ints(c.get("sizes"), f"tensor {fqn!r} chunk sizes")
            if len(offsets) != len(shape) or len(sizes) != len(shape):
                raise CorruptCheckpointError(
                    f"tensor {fqn!r} {list(shape)} has a chunk at {list(offsets)} of {list(sizes)}"
                )
            if any(o + s > n for o, s, n in zip(offsets, sizes, shape, strict=True)):
                raise CorruptCheckpointError(
                    f"tensor {fqn!r}: the chunk at {list(offsets)} of size {list(sizes)} reaches past {list(shape)}"
                )
            place = places.get((fqn, offsets))
            if place is None:
                raise CorruptCheckpointError(f"tensor {fqn!r}: no file holds its chunk at offsets {list(offsets)}")
            chunks.append(self._chunk(fqn, offsets, sizes, place))
            covered += math.prod(sizes)
        if covered != math.prod(shape):
            raise CorruptCheckpointError(
                f"tensor {fqn!r} {list(shape)}: its chunks hold {covered} of {math.prod(shape)} elements; "
                "a rank's files are missing or the checkpoint is incomplete"
            )
        self._chunks[fqn] = chunks
        files = sorted({c.file for c in chunks})
        where = (
            f"{chunks[0].file} +{chunks[0].start}"
            if len(chunks) == 1
            else f"{len(chunks)} chunks in {', '.join(files)}"
        )
        self._infos.append(TensorInfo(fqn, dtype, shape, where))

    def _chunk(self, fqn: str, offsets: tuple[int, ...], sizes: tuple[int, ...], place: Record) -> Chunk:
        descriptors = place.get("transform_descriptors")
        if descriptors:
            raise UnsupportedError(
                f"entry {fqn!r} is stored through {list(descriptors)} (compression or another transform); "
                "ckptkit reads DCP files saved without extensions"
            )
        name = place.get("relative_path")
        start, length = place.get("offset"), place.get("length")
        if not isinstance(name, str) or type(start) is not int or type(length) is not int or start < 0 or length < 0:
            raise CorruptCheckpointError(f"entry {fqn!r} has storage info {place.values!r:.120}")
        check_relative_name(name, ".metadata")
        buf = self._map(name)
        if start + length > len(buf):
            raise CorruptCheckpointError(
                f"entry {fqn!r} lies at bytes {start}-{start + length} of {name}, which has {len(buf)}: truncated?"
            )
        return Chunk(offsets, sizes, name, start, length)

    def _map(self, name: str) -> mmap.mmap:
        buf = self._maps.get(name)
        if buf is None:
            assert self.path is not None
            path = self.path / name
            if not path.is_file():
                raise CorruptCheckpointError(f"{name}, which .metadata refers to, is missing from the folder")
            f = open(path, "rb")  # noqa: SIM115 - kept open with its map until close()
            self._files.append(f)
            if path.stat().st_size == 0:
                raise CorruptCheckpointError(f"{name} is empty")
            buf = self._maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return buf

    def _archive(self, fqn: str, chunk: Chunk) -> Any:
        region = Region(self._maps[chunk.file], chunk.start, chunk.length)
        if region.read(4) != ZIP_MAGIC:
            raise CorruptCheckpointError(f"entry {fqn!r} at {chunk.file} +{chunk.start} is not a torch.save archive")
        region.seek(0)
        try:
            return read_zip(cast(BinaryIO, region), chunk.length, strict=True)
        except CkptkitError as err:
            raise type(err)(f"entry {fqn!r} in {chunk.file} +{chunk.start}: {err.message}") from None

    def _read_object(self, fqn: str, place: Record | None) -> None:
        if place is None:
            raise CorruptCheckpointError(f"entry {fqn!r}: no file holds it")
        chunk = self._chunk(fqn, (), (), place)
        tree = flatten({fqn: self._archive(fqn, chunk).root})  # named from the entry, as a state dict would be
        self.extras.update(tree.extras)
        for key, rec in tree.tensors.items():
            self.extras[key] = f"<tensor {rec.dtype.name} {list(rec.shape)} inside a pickled object>"

    def _parse(self, fqn: str, chunk: Chunk) -> tuple[TensorRecord, int]:
        """The chunk's tensor record and the absolute offset of its storage in ``chunk.file``."""
        parsed = self._parsed.get(chunk)
        if parsed is not None:
            return parsed
        archive = self._archive(fqn, chunk)
        rec = archive.root
        want = self.info(fqn)
        if not isinstance(rec, TensorRecord) or rec.shape != chunk.sizes or rec.dtype != want.dtype:
            got = f"{rec.dtype.name} {list(rec.shape)}" if isinstance(rec, TensorRecord) else type(rec).__name__
            raise CorruptCheckpointError(
                f"tensor {fqn!r}: the chunk at {list(chunk.offsets)} in {chunk.file} holds {got}, "
                f"expected {want.dtype.name} {list(chunk.sizes)}"
            )
        if archive.big_endian:
            raise UnsupportedError(f"tensor {fqn!r} was saved on a big-endian machine")
        span = archive.locate(rec.storage.key)
        start = chunk.start + check_bounds(fqn, rec, span)
        parsed = self._parsed[chunk] = (rec, start)
        return parsed

    def tensor_infos(self) -> Sequence[TensorInfo]:
        return self._infos

    def chunk_archives(self) -> Iterator[tuple[str, Chunk, mmap.mmap]]:
        """Every tensor chunk, with the map of the file that holds its ``torch.save`` archive."""
        for fqn, chunks in self._chunks.items():
            for chunk in chunks:
                yield fqn, chunk, self._maps[chunk.file]

    def read_tensor(self, name: str) -> np.ndarray:
        import numpy as np

        chunks = self._chunks[name]
        info = self.info(name)
        if len(chunks) == 1:
            rec, start = self._parse(name, chunks[0])
            return record_array(self._maps[chunks[0].file], rec, start, big_endian=False)
        out = np.empty(info.shape, info.dtype.numpy)
        for chunk in chunks:
            rec, start = self._parse(name, chunk)
            piece = record_array(self._maps[chunk.file], rec, start, big_endian=False)
            out[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes, strict=True))] = piece
        return out

    def raw_extent(self, name: str) -> RawExtent | None:
        chunks = self._chunks[name]
        if len(chunks) != 1 or self.path is None:
            return None
        rec, start = self._parse(name, chunks[0])
        if not rec.is_raw():
            return None
        itemsize = rec.dtype.itemsize
        return RawExtent(self.path / chunks[0].file, start + rec.offset * itemsize, rec.numel * itemsize)

    def close(self) -> None:
        # Arrays handed out may still view the maps; leave those to the garbage collector.
        self._maps = {}
        for f in self._files:
            f.close()
        self._files = []


class Region:
    """A read-only file object over ``length`` bytes of a map from ``start``: one chunk's archive."""

    def __init__(self, buf: mmap.mmap, start: int, length: int) -> None:
        self._view = memoryview(buf)[start : start + length]
        self._pos = 0

    def read(self, n: int = -1, /) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._pos + n)
        data = bytes(self._view[self._pos : end])
        self._pos = max(self._pos, end)
        return data

    def seek(self, pos: int, whence: int = 0, /) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True


def _read_metadata(path: Path) -> Record:
    if not path.is_file():
        raise CorruptCheckpointError(f"no {METADATA_NAME} file in the folder: not a complete DCP checkpoint")
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise CorruptCheckpointError(
            f"{METADATA_NAME} is {size:,} bytes; ckptkit refuses pickles over {MAX_METADATA_BYTES:,}"
        )
    with open(path, "rb") as f:
        meta, _ = load(f, METADATA_NAME, strict=True, unpickler_class=MetadataUnpickler)
    if not isinstance(meta, _RECORDS["Metadata"]):
        raise CorruptCheckpointError(f"{METADATA_NAME} holds {type(meta).__name__}, not DCP Metadata")
    return meta


def _places(storage: Mapping[Any, Any]) -> dict[tuple[str, Any], Record]:
    """``storage_data`` keyed by (name, chunk offsets), or (name, None) for objects."""
    places: dict[tuple[str, Any], Record] = {}
    for key, value in storage.items():
        if not isinstance(key, Record) or not isinstance(value, Record):
            raise CorruptCheckpointError(f"storage_data maps {key!r:.60} to {value!r:.60}")
        fqn, offset = key.get("fqn"), key.get("offset")
        places[(fqn, None if offset is None else tuple(offset))] = value
    return places


def _dtype_marker(fqn: str, properties: Any) -> Marker:
    marker = properties.get("dtype") if isinstance(properties, Record) else None
    if not (isinstance(marker, Marker) and marker.kind == "dtype"):
        raise CorruptCheckpointError(f"tensor {fqn!r} has no dtype in .metadata")
    return marker


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise CorruptCheckpointError(f"{what} {value!r:.80} is not a list of non-negative integers")
    return tuple(value)


# --- Detection ----------------------------------------------------------------------------------


def sniff(head: bytes, path: Path) -> bool:
    """A folder with ``.metadata``, that file itself, or a ``.distcp`` file beside one."""
    if path.is_dir():
        return (path / METADATA_NAME).is_file()
    if path.name == METADATA_NAME:
        return head[:1] == b"\x80"  # a pickle, protocol 2 or later
    return path.name.endswith(DATA_SUFFIX) and (path.parent / METADATA_NAME).is_file()


def open_dcp(path: Path, options: Mapping[str, Any]) -> Checkpoint:
    return DcpCheckpoint(path if path.is_dir() else path.parent)


FORMAT = Format(
    name="dcp",
    description="torch.distributed.checkpoint folder (.metadata + .distcp), read without torch",
    extensions=(DATA_SUFFIX,),
    sniff=sniff,
    open=open_dcp,
    verify="ckptkit.formats.torch.verify:check_dcp",
    dtypes=frozenset(dtype_names()) - NOT_IN_TORCH,  # each chunk is a torch.save archive
)

__all__ = ["FORMAT", "DcpCheckpoint", "MetadataUnpickler", "Record"]
