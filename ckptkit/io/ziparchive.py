"""Opening zip archives from strangers: directory and member sizes checked before they are read.

``zipfile`` builds an object per member while it reads the central directory, and decompresses a
member into memory on ``read``. A forged end record can announce a directory of millions of
members, and a small compressed member can claim (and hold) gigabytes. :func:`open_zip` checks
the directory against :mod:`ckptkit.core.limits` before ``zipfile`` parses it; :func:`read_member`
checks a member's declared size before decompressing it and inflates no more than that size (a
member longer than it claims then fails its CRC check).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from typing import BinaryIO

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError

# What zipfile raises on damaged archives (bad names, unknown versions and methods).
ZIP_ERRORS = (
    zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, struct.error, zlib.error, KeyError,
)  # fmt: skip
_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_MAX_COMMENT = 0xFFFF
_MEMBERS_OVER_TENSORS = 64  # room for the records that are not tensors (pickle, version, config, ...)


def directory_size(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """(members, bytes) of the central directory as the end record states them; ``None`` if none is found."""
    tail_len = min(size, _EOCD.size + _MAX_COMMENT)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
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
