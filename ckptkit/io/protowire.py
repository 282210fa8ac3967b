"""The protobuf wire format, just enough to walk a message field by field and to write one.

Spec: https://protobuf.dev/programming-guides/encoding/. ONNX models and TensorFlow checkpoint
indexes are protobuf messages; walking the bytes ourselves, instead of parsing them with generated
classes, lets a reader skip over tensor payloads (they stay in the file, memory-mapped) and lets a
writer stream them, with no 2 GB message limit and no framework import. Every length and number is
checked against the bytes it claims, so hostile input raises :class:`CorruptCheckpointError`.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.names import utf8_text

if TYPE_CHECKING:
    import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1

# A remote model is walked over a ckptkit.io.source.RemoteBuffer, which offers what the walk uses
# (len, indexing, slicing, find) and is passed where a Buffer is expected.
Buffer: TypeAlias = "bytes | bytearray | mmap.mmap"


class Field(NamedTuple):
    """One field occurrence: ``start:end`` is its value (the content, for length-delimited ones)."""

    number: int
    wire_type: int
    tag_start: int
    start: int
    end: int
    value: int  # the number itself for varints, else 0


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= end:
            raise CorruptCheckpointError(f"protobuf data ends inside a number at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise CorruptCheckpointError(f"protobuf number at byte {pos} is longer than 10 bytes")


def fields(buf: Buffer, start: int, end: int) -> Iterator[Field]:
    """The fields of the message stored at ``buf[start:end]``, in file order."""
    # Hot loop of every scan: one-byte keys, lengths and numbers are read inline, Fields made without
    # the NamedTuple constructor's Python frame.
    new = tuple.__new__
    pos = start
    while pos < end:
        tag_start = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, end)
        wire_type = key & 7
        value = 0
        if wire_type == LEN:
            if pos < end and buf[pos] < 0x80:
                after = pos + 1 + buf[pos]
                pos += 1
            else:
                n, pos = read_varint(buf, pos, end)
                after = pos + n
        elif wire_type == VARINT:
            if pos < end and buf[pos] < 0x80:
                value, after = buf[pos], pos + 1
            else:
                value, after = read_varint(buf, pos, end)
        elif wire_type == I64:
            after = pos + 8
        elif wire_type == I32:
            after = pos + 4
        else:
            raise CorruptCheckpointError(f"protobuf wire type {wire_type} at byte {tag_start}: not a valid message")
        if after > end:
            raise CorruptCheckpointError(
                f"protobuf field {key >> 3} at byte {tag_start} runs {after - end} bytes past its message: truncated?"
            )
        if key < 8:
            raise CorruptCheckpointError(f"protobuf field number 0 at byte {tag_start}: not a valid message")
        yield new(Field, (key >> 3, wire_type, tag_start, pos, after, value))
        pos = after


def expect(f: Field, wire_type: int, what: str) -> Field:
    """``f`` if it has the wire type its field number calls for; else a corrupt-file error."""
    if f.wire_type != wire_type:
        raise CorruptCheckpointError(f"{what} (field {f.number} at byte {f.tag_start}) has the wrong wire type")
    return f


def text(buf: Buffer, f: Field, what: str) -> str:
    expect(f, LEN, what)
    try:
        return buf[f.start : f.end].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptCheckpointError(f"{what} at byte {f.start} is not UTF-8 text") from None


def signed(value: int) -> int:
    """A varint read as int64 (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_varints(data: np.ndarray) -> np.ndarray:
    """Every varint in ``data`` (uint8) as uint64, vectorised for packed repeated fields."""
    import numpy as np

    if data.size == 0:
        return np.zeros(0, np.uint64)
    last = data < 0x80
    if not last[-1]:
        raise CorruptCheckpointError("packed protobuf numbers end inside a number")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise CorruptCheckpointError("a packed protobuf number is longer than 10 bytes")
    position = np.arange(data.size) - np.repeat(starts, lengths)
    parts = (data & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts)


def repeated(buf: Buffer, pieces: Sequence[Field], element: str) -> np.ndarray:
    """The values of a repeated scalar field, packed or not, as ``element`` ("varint", "<f4", ...)."""
    import numpy as np

    arrays: list[np.ndarray] = []
    for f in pieces:
        if f.end <= f.start:
            raw = np.zeros(0, np.uint8)
        elif isinstance(buf, bytes | bytearray | mmap.mmap):
            raw = np.frombuffer(buf, np.uint8, f.end - f.start, f.start)
        else:  # a buffer fetched as it is read (ckptkit.io.source.RemoteBuffer): only these bytes
            raw = np.frombuffer(buf[f.start : f.end], np.uint8)
        if element == "varint":
            if f.wire_type == VARINT:
                arrays.append(np.array([f.value], np.uint64))
            else:
                expect(f, LEN, "packed numbers")
                arrays.append(decode_varints(raw))
            continue
        width = np.dtype(element).itemsize
        if f.wire_type not in (LEN, I32 if width == 4 else I64):
            raise CorruptCheckpointError(f"field {f.number} at byte {f.tag_start} has the wrong wire type")
        if raw.size % width:
            raise CorruptCheckpointError(f"packed field {f.number} at byte {f.start} has a partial number")
        arrays.append(raw.view(element))
    if not arrays:
        return np.zeros(0, np.uint64 if element == "varint" else element)
    return np.concatenate(arrays)


# Encoding.


def varint(value: int) -> bytes:
    """``value`` as a varint; negative numbers as 64-bit two's complement, as protobuf does."""
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    return max(1, ((value & _MASK64).bit_length() + 6) // 7)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def len_prefix(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field whose content follows separately."""
    return key(number, LEN) + varint(length)


def len_field_size(number: int, length: int) -> int:
    """Bytes a length-delimited field with ``length`` bytes of content takes."""
    return varint_size(number << 3 | LEN) + varint_size(length) + length


def bytes_field(number: int, payload: bytes) -> bytes:
    return len_prefix(number, len(payload)) + payload


def string_field(number: int, value: str, where: str = "a protobuf message") -> bytes:
    """A string field; ``where`` names the format in the error for text that is not UTF-8."""
    return bytes_field(number, utf8_text(value, where, "text"))


def varint_field(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)
