"""A streaming writer for uncompressed zip archives laid out byte for byte as PyTorch's writer does.

PyTorch writes with miniz (``caffe2/serialize/inline_container.cc``): every member is stored,
its data starts at a multiple of 64 thanks to an ``FB`` extra field of ``Z`` padding in the local
header, a data descriptor (CRC and sizes) follows the data, and the archive ends with a zip64
end-of-central-directory record. ``torch.load`` can compute storage offsets from this layout
without reading the local headers (``_get_offset`` in ``torch/serialization.py``), so the layout
is matched exactly rather than only validly.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ckptkit.io.ziparchive import LOCAL_HEADER, LOCAL_HEADER_SIGNATURE

ALIGNMENT = 64
ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets at or above this need zip64 fields
_FLAGS = 0x0808  # bit 3: data descriptor follows the data; bit 11: names are UTF-8
_DOS_DATE = 0x21  # 1980-01-01, as in reproducible builds; torch writes no time either
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")


@dataclass(frozen=True)
class _Entry:
    name: bytes
    header_offset: int
    size: int
    crc: int


def _zip64_extra(size: int | None, offset: int | None) -> bytes:
    fields = ([size, size] if size is not None else []) + ([offset] if offset is not None else [])
    if not fields:
        return b""
    return struct.pack(f"<HH{len(fields)}Q", 0x0001, 8 * len(fields), *fields)


class ZipWriter:
    """Writes members one at a time to ``out``, which must be positioned at the archive's start.

    For each member call :meth:`begin`, write exactly ``size`` bytes to ``out``, then call
    :meth:`end` with their CRC-32; small members go through :meth:`write_record`.
    """

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._entries: list[_Entry] = []
        self._current: tuple[bytes, int, int] | None = None  # name, header offset, size
        self._pos = 0

    def begin(self, name: str, size: int) -> None:
        """Write the local header of member ``name`` of ``size`` bytes; its data goes next."""
        assert self._current is None, "end() the previous member first"
        raw = name.encode("utf-8")
        offset = self._pos
        zip64 = _zip64_extra(size if size >= ZIP64_LIMIT else None, offset if offset >= ZIP64_LIMIT else None)
        start = offset + LOCAL_HEADER.size + len(raw) + len(zip64) + 4
        padding = -start % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        version = 45 if zip64 else 20
        flags = _FLAGS if size else _FLAGS & ~0x8  # an empty member gets no data descriptor
        header = LOCAL_HEADER.pack(
            LOCAL_HEADER_SIGNATURE, version, flags, 0, 0, _DOS_DATE, 0, 0, 0, len(raw), len(extra)
        )
        self.out.write(header + raw + extra)
        self._pos += len(header) + len(raw) + len(extra)
        self._current = (raw, offset, size)

    def end(self, crc: int) -> None:
        """Close the current member, whose ``size`` bytes the caller has written."""
        assert self._current is not None, "begin() a member first"
        raw, offset, size = self._current
        self._pos += size
        if size:
            if size >= ZIP64_LIMIT or offset >= ZIP64_LIMIT:
                self.out.write(struct.pack("<IIQQ", 0x08074B50, crc, size, size))
                self._pos += 24
            else:
                self.out.write(struct.pack("<IIII", 0x08074B50, crc, size, size))
                self._pos += 16
        self._entries.append(_Entry(raw, offset, size, crc))
        self._current = None

    @property
    def position(self) -> int:
        """Bytes written so far (the next member's header offset once ``end`` was called)."""
        return self._pos

    def write_record(self, name: str, data: bytes) -> None:
        """Write a whole small member."""
        self.begin(name, len(data))
        self.out.write(data)
        self.end(zlib.crc32(data))

    def finish(self) -> None:
        """Write the central directory and the (zip64) end records."""
        assert self._current is None, "end() the last member first"
        cd_offset = self._pos
        for e in self._entries:
            big_size, big_offset = e.size >= ZIP64_LIMIT, e.header_offset >= ZIP64_LIMIT
            extra = _zip64_extra(e.size if big_size else None, e.header_offset if big_offset else None)
            version = 45 if extra else 20
            shown_size = 0xFFFFFFFF if big_size else e.size
            shown_offset = 0xFFFFFFFF if big_offset else e.header_offset
            flags = _FLAGS if e.size else _FLAGS & ~0x8
            self.out.write(_CENTRAL.pack(
                0x02014B50, version, version, flags, 0, 0, _DOS_DATE, e.crc, shown_size, shown_size,
                len(e.name), len(extra), 0, 0, 0, 0, shown_offset,
            ) + e.name + extra)  # fmt: skip
            self._pos += _CENTRAL.size + len(e.name) + len(extra)
        cd_size = self._pos - cd_offset
        n = len(self._entries)
        eocd64_offset = self._pos
        self.out.write(_ZIP64_EOCD.pack(0x06064B50, _ZIP64_EOCD.size - 12, 45, 45, 0, 0, n, n, cd_size, cd_offset))
        self.out.write(_ZIP64_LOCATOR.pack(0x07064B50, 0, eocd64_offset, 1))
        self.out.write(_EOCD.pack(
            0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), min(cd_size, 0xFFFFFFFF), min(cd_offset, 0xFFFFFFFF), 0,
        ))  # fmt: skip
        self._pos += _ZIP64_EOCD.size + _ZIP64_LOCATOR.size + _EOCD.size
