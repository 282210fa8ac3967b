"""Opening zip archives from strangers: directory and member sizes checked before they are read.

``zipfile`` builds an object per member while it reads the central directory, and decompresses a
member into memory on ``read``. A forged end record can announce a directory of millions of
members, and a small compressed member can claim (and hold) gigabytes. :func:`open_zip` checks
the directory against :mod:`ckptkit.core.limits` before ``zipfile`` parses it; :func:`read_member`
checks a member's declared size before decompressing it and inflates no more than that size (a
member longer than it claims then fails its CRC check).

Formats that read a stored member in place (tensor data, an HDF5 file inside an archive) need
where its bytes start, which only its local file header tells: :func:`parse_local_header` is the
one reader of those headers, :func:`member_data_offset` finds a member's data through it, and
:func:`walk_local_headers` lists what a file cut short (its central directory gone) still holds.
Layout: PKWARE APPNOTE.TXT, sections 4.3.7 (local header), 4.3.9 (data descriptor), 4.5.3 (zip64).
"""

from __future__ import annotations

import mmap
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError

Buffer = bytes | mmap.mmap  # what the local-header reader looks through: bytes read, or a mapped file

# What zipfile raises on damaged archives (bad names, unknown versions and methods).
ZIP_ERRORS = (
    zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, struct.error, zlib.error, KeyError,
)  # fmt: skip
LOCAL_HEADER_MAGIC = b"PK\x03\x04"  # also how every zip file starts
LOCAL_HEADER_SIGNATURE = 0x04034B50
# signature, version, flags, method, time, date, CRC-32, compressed size, size, name length, extra
# length; the name and the extra field follow.
LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_ZIP64_EXTRA = 0x0001
_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_MAX_COMMENT = 0xFFFF
_SHORT_TAIL = 1024
_MEMBERS_OVER_TENSORS = 64  # room for the records that are not tensors (pickle, version, config, ...)


def directory_size(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """(members, bytes) of the central directory as the end record states them; ``None`` if none is found."""
    # The end record is nearly always in the last bytes (no comment): a short tail first, so that
    # a remote archive costs one small range read here, then the longest tail a comment allows.
    for tail_len in (min(size, _SHORT_TAIL), min(size, _EOCD.size + _MAX_COMMENT)):
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at >= 0 and len(tail) - at >= _EOCD.size:
            break
    else:
        return None
    _sig, _disk, _cd_disk, _here, members, cd_bytes, _cd_offset, _comment = _EOCD.unpack_from(tail, at)
    locator_at = size - tail_len + at - _ZIP64_LOCATOR.size
    if locator_at >= 0:
        f.seek(locator_at)
        locator = f.read(_ZIP64_LOCATOR.size)
        if len(locator) == _ZIP64_LOCATOR.size and locator[:4] == b"PK\x06\x07":
            eocd64_at = _ZIP64_LOCATOR.unpack(locator)[2]
            if 0 <= eocd64_at <= size - _ZIP64_EOCD.size:
                f.seek(eocd64_at)
                record = f.read(_ZIP64_EOCD.size)
                if record[:4] == b"PK\x06\x06":
                    fields = _ZIP64_EOCD.unpack(record)
                    members, cd_bytes = fields[7], fields[8]
    return members, cd_bytes


def open_zip(f: BinaryIO, size: int) -> zipfile.ZipFile:
    """``zipfile.ZipFile(f)`` once its central directory is known to fit the limits."""
    stated = directory_size(f, size)
    if stated is not None:
        members, cd_bytes = stated
        limits.check("the zip archive's central directory", cd_bytes, "header_bytes")
        if members > limits.current().tensors + _MEMBERS_OVER_TENSORS:
            raise limits.exceeded("the zip archive's member count", members, "tensors", "members")
    f.seek(0)
    try:
        return zipfile.ZipFile(f)
    except ZIP_ERRORS as err:
        raise CorruptCheckpointError(
            f"the zip archive is incomplete or damaged ({err}); was the file truncated by a download or copy?"
        ) from None


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: str = "member_bytes") -> bytes:
    """A member's bytes, refused before decompression when its declared size is over ``limit``."""
    limits.check(f"record {info.filename} (uncompressed)", info.file_size, limit)
    try:
        # read(n), not read(): without a size, zipfile inflates up to 2 GiB in one call before it
        # compares the result with the declared size.
        with zf.open(info) as member:
            data = member.read(info.file_size)
    except ZIP_ERRORS as err:
        raise CorruptCheckpointError(f"record {info.filename} cannot be read: {err}") from None
    if len(data) != info.file_size:
        raise CorruptCheckpointError(
            f"record {info.filename} holds {len(data)} bytes, but its header says {info.file_size}: truncated?"
        )
    return data


@dataclass(frozen=True)
class LocalHeader:
    """A member's local file header, as found at ``offset``.

    ``name`` and ``extra`` are cut short when the bytes end inside them; :attr:`data_offset`
    follows the lengths the header states.
    """

    offset: int
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    name_len: int
    extra_len: int
    name: str  # bytes that are not UTF-8 replaced: for messages and lookups
    extra: bytes

    @property
    def data_offset(self) -> int:
        return self.offset + LOCAL_HEADER.size + self.name_len + self.extra_len

    @property
    def has_descriptor(self) -> bool:
        """Whether the CRC and sizes follow the data (flag bit 3) instead of standing in this header."""
        return bool(self.flags & 0x8)


def parse_local_header(buf: Buffer, offset: int = 0, base: int = 0) -> LocalHeader | None:
    """The local file header at ``offset`` of ``buf``, or ``None`` if ``buf`` ends inside its fixed
    part or no header starts there. ``base`` is where ``buf`` lies in the file, for the offsets."""
    if offset < 0 or offset + LOCAL_HEADER.size > len(buf):
        return None
    sig, _version, flags, method, _time, _date, crc, csize, usize, name_len, extra_len = LOCAL_HEADER.unpack_from(
        buf, offset
    )
    if sig != LOCAL_HEADER_SIGNATURE:
        return None
    name_at = offset + LOCAL_HEADER.size
    name = bytes(buf[name_at : name_at + name_len]).decode("utf-8", "replace")
    extra = bytes(buf[name_at + name_len : name_at + name_len + extra_len])
    return LocalHeader(base + offset, flags, method, crc, csize, usize, name_len, extra_len, name, extra)


def read_local_header(f: BinaryIO, offset: int) -> LocalHeader | None:
    """The local file header at ``offset`` of the open file ``f``, or ``None`` (see :func:`parse_local_header`)."""
    f.seek(offset)
    fixed = f.read(LOCAL_HEADER.size)
    if len(fixed) < LOCAL_HEADER.size:
        return None
    name_len, extra_len = LOCAL_HEADER.unpack(fixed)[9:11]
    return parse_local_header(fixed + f.read(name_len + extra_len), 0, base=offset)


def member_data_offset(f: BinaryIO, info: zipfile.ZipInfo, size: int, record: str = "") -> int:
    """Where the data of member ``info`` starts in the ``size``-byte file ``f``, checked to end within it.

    ``record`` names the member in messages (default: its file name).
    """
    record = record or info.filename
    header = read_local_header(f, info.header_offset)
    if header is None:
        raise CorruptCheckpointError(f"record {record}: no local file header at byte {info.header_offset}")
    offset = header.data_offset
    if offset + info.file_size > size:
        raise CorruptCheckpointError(
            f"record {record} should hold {info.file_size} bytes from byte {offset}, but the file ends at {size}: "
            "truncated?"
        )
    return offset


@dataclass(frozen=True)
class RecordSpan:
    """Where a member's (possibly compressed) bytes lie, with the CRC-32 its header states."""

    name: str
    data_offset: int
    size: int
    compressed: bool
    crc: int

    @property
    def end(self) -> int:
        return self.data_offset + self.size


def walk_local_headers(buf: Buffer) -> Iterator[RecordSpan]:
    """The members found by walking local headers from the start: what a zip cut short still holds.

    A member whose sizes follow its data (flag bit 3, as torch and many streaming writers do)
    ends at the first data descriptor whose size fields match the bytes before it; a member with
    none was cut off, and is given a size reaching one byte past the end of ``buf``.
    """
    pos, size = 0, len(buf)
    while (header := parse_local_header(buf, pos)) is not None:
        data = header.data_offset
        csize, crc = header.compressed_size, header.crc
        if header.has_descriptor:
            found = _descriptor(buf, data, stored=header.method == 0)
            if found is None:  # cut off inside this member
                yield RecordSpan(header.name, data, size - data + 1, header.method != 0, crc)
                return
            csize, crc, pos = found
        else:
            if csize == 0xFFFFFFFF:
                csize = _zip64_size(header.extra, header.size == 0xFFFFFFFF)
            pos = data + csize
        yield RecordSpan(header.name, data, csize, header.method != 0, crc)


def _descriptor(buf: Buffer, data: int, stored: bool) -> tuple[int, int, int] | None:
    """(size, CRC-32, position after it) of the data descriptor ending the member whose data starts at ``data``.

    It is the first descriptor signature whose compressed size is the count of bytes before it
    (and whose size is too, for a stored member), in the 32-bit or the zip64 layout. A compressed
    member's sizes differ, so which layout it is shows only in what follows: the next signature.
    """
    at = data
    while (at := buf.find(_DESCRIPTOR_MAGIC, at)) >= 0:
        n = at - data
        for fields, end in (("<II", at + 16), ("<QQ", at + 24)):
            if end <= len(buf):
                csize, usize = struct.unpack_from(fields, buf, at + 8)
                followed = end == len(buf) or buf[end : end + 2] == b"PK"
                if csize == n and (usize == n if stored else followed):
                    return n, struct.unpack_from("<I", buf, at + 4)[0], end
        at += 1
    return None


def _zip64_size(extra: bytes, has_usize: bool) -> int:
    """The compressed size from a zip64 extra field (after the uncompressed size when that is there too)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        if tag == _ZIP64_EXTRA:
            (value,) = struct.unpack_from("<Q", extra, pos + 4 + (8 if has_usize else 0))
            return int(value)
        pos += 4 + n
    return 0
