"""Hand-built TensorFlow checkpoints for tests and fuzzing: what TensorFlow cannot be asked to write
(big-endian data, snappy-compressed index blocks, broken tables), made from ckptkit's table and
protobuf writers plus a small snappy compressor written here for the purpose."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from ckptkit.core.dtypes import from_numpy
from ckptkit.formats.tensorflow import dtypes as tf_dtypes
from ckptkit.formats.tensorflow.paths import data_path, index_path
from ckptkit.formats.tensorflow.protos import BIG, LITTLE, Entry, Header, Slice
from ckptkit.formats.tensorflow.read import slice_key
from ckptkit.formats.tensorflow.table import BLOCK_TRAILER, MAGIC_BYTES, SNAPPY, TableBuilder
from ckptkit.io import crc32c


def snappy_compress(data: bytes) -> bytes:
    """A valid raw snappy stream: literals, and copies of earlier 4-byte matches (overlapping ones too)."""
    out = bytearray()
    n = len(data)
    while True:
        out.append((n & 0x7F) | (0x80 if n >= 0x80 else 0))
        n >>= 7
        if not n:
            break
    pos = 0
    literal_start = 0
    seen: dict[bytes, int] = {}

    def literal(chunk: bytes) -> None:
        for start in range(0, len(chunk), 65536):
            piece = chunk[start : start + 65536]
            length = len(piece) - 1
            if length < 60:
                out.append(length << 2)
            else:
                width = (length.bit_length() + 7) // 8
                out.append((59 + width) << 2)
                out.extend(length.to_bytes(width, "little"))
            out.extend(piece)

    while pos + 4 <= len(data):
        key = data[pos : pos + 4]
        back = seen.get(key)
        seen[key] = pos
        if back is None or pos - back > 65535:
            pos += 1
            continue
        length = 4
        while pos + length < len(data) and data[back + length] == data[pos + length] and length < 64:
            length += 1
        literal(data[literal_start:pos])
        offset = pos - back
        if 4 <= length <= 11 and offset < 2048:
            out.append(1 | ((length - 4) << 2) | ((offset >> 8) << 5))
            out.append(offset & 0xFF)
        else:
            out.append(2 | ((length - 1) << 2))
            out.extend(struct.pack("<H", offset))
        pos += length
        literal_start = pos
    literal(data[literal_start:])
    return bytes(out)


def _entries_bytes(entries: dict[bytes, bytes], header: Header, snappy: bool, block_size: int) -> bytes:
    buf = io.BytesIO()
    builder = TableBuilder(buf, block_size=block_size)
    builder.add(b"", header.encode())
    for key in sorted(entries):
        builder.add(key, entries[key])
    builder.finish()
    raw = buf.getvalue()
    return recompress(raw) if snappy else raw


def recompress(table: bytes) -> bytes:
    """The same table with every block snappy-compressed (handles and checksums rewritten)."""
    from ckptkit.formats.tensorflow.table import Table, _varint, read_footer

    footer = read_footer(table)
    parsed = Table(table)
    out = bytearray()

    def block(contents: bytes) -> bytes:
        packed = snappy_compress(contents)
        handle = _varint(len(out)) + _varint(len(packed))
        crc = crc32c.mask(crc32c.extend(crc32c.value(packed), bytes((SNAPPY,))))
        out.extend(packed + bytes((SNAPPY,)) + struct.pack("<I", crc))
        return handle

    index_builder_entries = []
    for key, handle in parsed.blocks:
        contents = table[handle.offset : handle.offset + handle.size]
        index_builder_entries.append((key, block(contents)))
    meta = table[footer.metaindex.offset : footer.metaindex.offset + footer.metaindex.size]
    meta_handle = block(meta)
    from ckptkit.formats.tensorflow.table import _BlockBuilder

    ib = _BlockBuilder(1)
    for key, handle in index_builder_entries:
        ib.add(key, handle)
    index_handle = block(ib.finish())
    out.extend((meta_handle + index_handle).ljust(40, b"\0") + MAGIC_BYTES)
    return bytes(out)


def write_bundle(
    prefix: Path,
    tensors: dict[str, np.ndarray],
    *,
    partitioned: dict[str, tuple[np.ndarray, list[list[tuple[int, int]]]]] | None = None,
    big_endian: bool = False,
    snappy: bool = False,
    block_size: int = 262144,
    shards: int = 1,
) -> None:
    """Write ``tensors`` (and partitioned ones, as (array, slices given as (start, length) per dim))."""
    files = [bytearray() for _ in range(shards)]
    entries: dict[bytes, bytes] = {}

    def store(key: bytes, arr: np.ndarray, shard: int) -> Entry:
        code = tf_dtypes.to_tensorflow(from_numpy(arr.dtype))
        assert code is not None
        data = arr.astype(arr.dtype.newbyteorder(">")) if big_endian and arr.dtype.itemsize > 1 else arr
        raw = np.ascontiguousarray(data).tobytes()
        offset = len(files[shard])
        files[shard] += raw
        return Entry(code, tuple(arr.shape), shard, offset, len(raw), crc32c.mask(crc32c.value(raw)))

    for i, (name, arr) in enumerate(tensors.items()):
        entries[name.encode()] = store(name.encode(), arr, i % shards).encode()
    for name, (arr, pieces) in (partitioned or {}).items():
        slices = []
        for j, piece in enumerate(pieces):
            s = Slice(tuple(piece))
            window = tuple(slice(a, a + n if n != -1 else None) for a, n in piece)
            entries[slice_key(name.encode(), s)] = store(name.encode(), arr[window], j % shards).encode()
            slices.append(s)
        code = tf_dtypes.to_tensorflow(from_numpy(arr.dtype))
        assert code is not None
        entries[name.encode()] = Entry(code, tuple(arr.shape), slices=tuple(slices)).encode()
    header = Header(num_shards=shards, endianness=BIG if big_endian else LITTLE)
    index_path(prefix).write_bytes(_entries_bytes(entries, header, snappy, block_size))
    for shard, data in enumerate(files):
        data_path(prefix, shard, shards).write_bytes(bytes(data))


def rewrite_block_crc(table: bytearray, offset: int, size: int) -> None:
    """Recompute the trailer of the block at ``offset`` after its bytes were edited in place."""
    contents = bytes(table[offset : offset + size])
    kind = table[offset + size]
    crc = crc32c.mask(crc32c.extend(crc32c.value(contents), bytes((kind,))))
    table[offset + size + 1 : offset + size + BLOCK_TRAILER] = struct.pack("<I", crc)
