"""Snappy decompression of table blocks, in Python.

Spec: https://github.com/google/snappy/blob/main/format_description.txt (the raw format, no
framing). TensorFlow writes checkpoint indexes uncompressed, but its table format allows snappy
blocks, so other writers may use them. Blocks are small (an index holds names and offsets, not
tensor data), so a Python decoder is quick enough and needs no compiled package. Every length and
offset is checked: a hostile block cannot make it read outside its input, copy from before the
start of its output, or produce more than it declared.
"""

from __future__ import annotations

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError


def _corrupt(what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"snappy-compressed block: {what}")


def uncompressed_length(data: bytes) -> tuple[int, int]:
    """The length the block declares and where its elements start."""
    result = shift = pos = 0
    while True:
        if pos >= len(data) or pos >= 5:
            raise _corrupt("the uncompressed length is cut off or longer than 32 bits")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if result >= 1 << 32:
        raise _corrupt("the uncompressed length is longer than 32 bits")
    return result, pos


def decompress(data: bytes) -> bytes:
    """The bytes a raw snappy block holds."""
    length, pos = uncompressed_length(data)
    limits.check("a snappy-compressed block's uncompressed size", length, "header_bytes")
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                width = n - 59
                if pos + width > end:
                    raise _corrupt(f"a literal's length is cut off at byte {pos}")
                n = int.from_bytes(data[pos : pos + width], "little")
                pos += width
            n += 1
            if pos + n > end:
                raise _corrupt(f"a literal of {n} bytes at byte {pos} runs past the block")
            if len(out) + n > length:
                raise _corrupt(f"the data is longer than the {length} bytes declared")
            out += data[pos : pos + n]
            pos += n
            continue
        if kind == 1:
            n = ((tag >> 2) & 7) + 4
            if pos + 1 > end:
                raise _corrupt(f"a copy's offset is cut off at byte {pos}")
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            n = (tag >> 2) + 1
            width = 2 if kind == 2 else 4
            if pos + width > end:
                raise _corrupt(f"a copy's offset is cut off at byte {pos}")
            offset = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise _corrupt(f"a copy at byte {pos} reaches {offset} bytes back, before the start of the data")
        if len(out) + n > length:
            raise _corrupt(f"the data is longer than the {length} bytes declared")
        start = len(out) - offset
        if n <= offset:
            out += out[start : start + n]
        else:  # the copy overlaps what it produces: repeat the period
            period = bytes(out[start:])
            out += (period * (n // offset + 1))[:n]
    if len(out) != length:
        raise _corrupt(f"the data holds {len(out)} bytes, not the {length} declared")
    return bytes(out)
