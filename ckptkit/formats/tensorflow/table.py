"""The sorted key-value table TensorFlow stores a checkpoint's index in (LevelDB's table format).

Layout (``tsl/lib/io/table_builder.cc``, ``block_builder.cc``, ``format.cc``): data blocks, a
meta-index block, an index block, then a 48-byte footer: two block handles (offset and size as
varints, padded to 40 bytes) and the magic number 0xdb4775248b80fb57. Every block is followed by
a type byte (0 raw, 1 snappy) and the masked CRC-32C of its bytes and that type byte. A block holds
entries ``shared, non_shared, value_length`` (varint32 each), the key's bytes past those it shares
with the previous key, and the value; then the offsets of its restart points (entries that share
nothing, every 16th) as uint32, and their count. The index block maps a key at or past each data
block's last key to that block's handle.

The reader checks every handle, length and offset against the bytes it has before using it, so a
hostile index ends in :class:`CorruptCheckpointError`, never in a read past its bounds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.io import crc32c

MAGIC = 0xDB4775248B80FB57
MAGIC_BYTES = struct.pack("<Q", MAGIC)
FOOTER_SIZE = 48
_HANDLES_SIZE = 40  # two handles of at most 10 + 10 bytes, zero-padded
BLOCK_TRAILER = 5
RAW, SNAPPY = 0, 1
# What TensorFlow's table builder uses (tsl/lib/io/table_options.h): 256 KiB blocks, a restart
# point every 16 keys in data blocks and at every key in the index block.
BLOCK_SIZE = 262144
RESTART_INTERVAL = 16


@dataclass(frozen=True)
class BlockHandle:
    """Where a block lies: its offset and size, the 5-byte trailer not counted."""

    offset: int
    size: int

    def encode(self) -> bytes:
        return _varint(self.offset) + _varint(self.size)


def read_varint(buf: bytes, pos: int, end: int, max_bytes: int, what: str) -> tuple[int, int]:
    """A varint of at most ``max_bytes`` bytes (5 for 32-bit, 10 for 64-bit) at ``pos``, and the position after it."""
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise CorruptCheckpointError(f"{what} at byte {start} is cut off")
        if pos - start >= max_bytes:
            raise CorruptCheckpointError(f"{what} at byte {start} is longer than {max_bytes} bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if result >> (32 if max_bytes == 5 else 64):
        raise CorruptCheckpointError(f"{what} at byte {start} is too large")
    return result, pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_handle(buf: bytes, pos: int, end: int, what: str) -> tuple[BlockHandle, int]:
    offset, pos = read_varint(buf, pos, end, 10, f"{what} offset")
    size, pos = read_varint(buf, pos, end, 10, f"{what} size")
    return BlockHandle(offset, size), pos


@dataclass(frozen=True)
class Footer:
    metaindex: BlockHandle
    index: BlockHandle


def read_footer(data: bytes) -> Footer:
    """The footer of a table held in ``data``; a file without the magic number is not a table."""
    if len(data) < FOOTER_SIZE:
        raise CorruptCheckpointError(f"{len(data)} bytes is too short for a table (its footer alone takes 48)")
    if data[-8:] != MAGIC_BYTES:
        raise CorruptCheckpointError("the file does not end with the table magic number: truncated, or not an index")
    start = len(data) - FOOTER_SIZE
    meta, pos = decode_handle(data, start, start + _HANDLES_SIZE, "the footer's meta-index handle")
    index, _ = decode_handle(data, pos, start + _HANDLES_SIZE, "the footer's index handle")
    return Footer(meta, index)


def read_block(data: bytes, handle: BlockHandle, what: str) -> bytes:
    """A block's contents, its checksum checked and snappy undone."""
    end = handle.offset + handle.size + BLOCK_TRAILER
    limit = len(data) - FOOTER_SIZE
    if end > limit:
        raise CorruptCheckpointError(
            f"{what} (bytes {handle.offset}..{end} with its trailer) runs past the table's blocks, which end at "
            f"byte {limit}"
        )
    contents = data[handle.offset : handle.offset + handle.size]
    kind = data[handle.offset + handle.size]
    (stored,) = struct.unpack_from("<I", data, handle.offset + handle.size + 1)
    actual = crc32c.extend(crc32c.value(contents), bytes((kind,)))
    if crc32c.unmask(stored) != actual:
        raise CorruptCheckpointError(f"{what} at byte {handle.offset} does not match its checksum: the file is damaged")
    if kind == RAW:
        return contents
    if kind == SNAPPY:
        from .snappy import decompress

        try:
            return decompress(contents)
        except CorruptCheckpointError as err:
            raise CorruptCheckpointError(f"{what} at byte {handle.offset}: {err.message}") from None
    raise CorruptCheckpointError(f"{what} at byte {handle.offset} has compression type {kind}, which tables do not use")


def block_entries(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of a block's contents, in order; restart points are checked against them."""
    size = len(block)
    if size < 4:
        raise CorruptCheckpointError(f"{what} holds {size} bytes, too few for its restart count")
    (count,) = struct.unpack_from("<I", block, size - 4)
    if count > (size - 4) // 4:
        raise CorruptCheckpointError(
            f"{what} claims {count:,} restart points, more than its {size} bytes can hold: the restart array is out "
            "of bounds"
        )
    entries_end = size - 4 - 4 * count
    restarts = struct.unpack_from(f"<{count}I", block, entries_end)
    if count == 0:
        if entries_end:
            raise CorruptCheckpointError(f"{what} holds entries but no restart point")
        return
    if restarts[0] != 0:
        raise CorruptCheckpointError(f"{what}: its first restart point is at byte {restarts[0]}, not 0")
    pending = list(restarts)
    pending.reverse()
    pos = 0
    key = b""
    while pos < entries_end:
        restart = bool(pending) and pending[-1] == pos
        if pending and pending[-1] < pos:
            raise CorruptCheckpointError(
                f"{what}: restart point {pending[-1]} is not at the start of an entry (or restarts are out of order)"
            )
        if restart:
            pending.pop()
        shared, p = read_varint(block, pos, entries_end, 5, f"{what}: an entry's shared key length")
        non_shared, p = read_varint(block, p, entries_end, 5, f"{what}: an entry's key length")
        value_length, p = read_varint(block, p, entries_end, 5, f"{what}: an entry's value length")
        if shared > len(key) or (restart and shared):
            raise CorruptCheckpointError(
                f"{what}: the entry at byte {pos} shares {shared} bytes with a previous key of {len(key)} bytes"
                + (" at a restart point" if restart and shared <= len(key) else "")
            )
        if p + non_shared + value_length > entries_end:
            raise CorruptCheckpointError(
                f"{what}: the entry at byte {pos} ({non_shared} key and {value_length} value bytes) runs past the "
                "block's entries"
            )
        key = key[:shared] + block[p : p + non_shared]
        p += non_shared
        yield key, block[p : p + value_length]
        pos = p + value_length
    if pending:
        raise CorruptCheckpointError(f"{what}: restart point {pending[-1]} lies past the block's last entry")


@dataclass
class Table:
    """A table held in memory: its data blocks, found through the index block, read on request."""

    data: bytes
    footer: Footer = field(init=False)
    blocks: list[tuple[bytes, BlockHandle]] = field(init=False)  # (index key, data block) in order

    def __post_init__(self) -> None:
        self.footer = read_footer(self.data)
        index = read_block(self.data, self.footer.index, "the index block")
        self.blocks = []
        for key, value in block_entries(index, "the index block"):
            handle, end = decode_handle(value, 0, len(value), f"the index entry for data block {len(self.blocks)}")
            if end != len(value):
                raise CorruptCheckpointError(f"the index entry for data block {len(self.blocks)} has trailing bytes")
            self.blocks.append((key, handle))

    def block_items(self, number: int) -> Iterator[tuple[bytes, bytes]]:
        """The entries of data block ``number``."""
        what = f"data block {number}"
        return block_entries(read_block(self.data, self.blocks[number][1], what), what)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in the table, in order; keys must increase strictly."""
        last: bytes | None = None
        for number in range(len(self.blocks)):
            for key, value in self.block_items(number):
                if last is not None and key <= last:
                    raise CorruptCheckpointError(
                        f"data block {number}: key {key[:80]!r} does not sort after the key before it; the index is "
                        "damaged"
                    )
                last = key
                yield key, value


# Writing.


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self.buffer = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    @property
    def empty(self) -> bool:
        return not self.buffer

    def size_estimate(self) -> int:
        return len(self.buffer) + 4 * len(self.restarts) + 4

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            limit = min(len(key), len(self.last_key))
            while shared < limit and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buffer))
            self.counter = 0
        self.buffer += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        self.buffer += key[shared:] + value
        self.last_key = key
        self.counter += 1

    def finish(self) -> bytes:
        return (
            bytes(self.buffer)
            + struct.pack(f"<{len(self.restarts)}I", *self.restarts)
            + struct.pack("<I", len(self.restarts))
        )


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key >= ``start`` and < ``limit``, as TensorFlow's builder picks it (its index keys)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes((start[i] + 1,))
    return start


def _short_successor(key: bytes) -> bytes:
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes((byte + 1,))
    return key


class TableBuilder:
    """Writes a table to ``out`` byte for byte as TensorFlow's builder does (uncompressed blocks).

    Keys must be added in strictly increasing byte order.
    """

    def __init__(self, out: BinaryIO, block_size: int = BLOCK_SIZE, restart_interval: int = RESTART_INTERVAL) -> None:
        self.out = out
        self.block_size = block_size
        self.offset = 0
        self.data_block = _BlockBuilder(restart_interval)
        self.index_block = _BlockBuilder(1)
        self.last_key = b""
        self.entries = 0
        self.pending: BlockHandle | None = None

    def add(self, key: bytes, value: bytes) -> None:
        if self.entries and key <= self.last_key:
            raise ValueError(f"table keys must increase: {key!r} after {self.last_key!r}")
        if self.entries and len(key) + len(value) >= 2 * self.block_size:
            self._flush()
        if self.pending is not None:
            self.index_block.add(_shortest_separator(self.last_key, key), self.pending.encode())
            self.pending = None
        self.last_key = key
        self.entries += 1
        self.data_block.add(key, value)
        if self.data_block.size_estimate() >= self.block_size:
            self._flush()

    def _flush(self) -> None:
        if self.data_block.empty:
            return
        self.pending = self._write_block(self.data_block)

    def _write_block(self, block: _BlockBuilder) -> BlockHandle:
        contents = block.finish()
        handle = BlockHandle(self.offset, len(contents))
        crc = crc32c.extend(crc32c.value(contents), bytes((RAW,)))
        self.out.write(contents + bytes((RAW,)) + struct.pack("<I", crc32c.mask(crc)))
        self.offset += len(contents) + BLOCK_TRAILER
        block.reset()
        return handle

    def finish(self) -> int:
        """Write the remaining blocks and the footer; returns the table's size."""
        self._flush()
        metaindex = self._write_block(_BlockBuilder(RESTART_INTERVAL))
        if self.pending is not None:
            self.index_block.add(_short_successor(self.last_key), self.pending.encode())
            self.pending = None
        index = self._write_block(self.index_block)
        footer = (metaindex.encode() + index.encode()).ljust(_HANDLES_SIZE, b"\0") + MAGIC_BYTES
        self.out.write(footer)
        self.offset += len(footer)
        return self.offset
