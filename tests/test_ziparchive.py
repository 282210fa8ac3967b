"""The one reader of zip local headers: where member data starts, and what a cut-short zip still holds."""

from __future__ import annotations

import io
import zipfile
import zlib

import pytest

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.io.ziparchive import (
    LOCAL_HEADER_MAGIC,
    member_data_offset,
    parse_local_header,
    read_local_header,
    walk_local_headers,
)

MEMBERS = {"a/data.pkl": b"pickle" * 10, "a/data/0": bytes(range(200)), "\u00e9t\u00e9/x": b"z" * 3}


class _Unseekable(io.BytesIO):
    """Output zipfile cannot seek back in, so it writes sizes in data descriptors (as torch does)."""

    def seek(self, *args: object) -> int:
        raise OSError("not seekable")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in MEMBERS.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_headers_agree_with_the_central_directory():
    raw = _zip()
    zf = zipfile.ZipFile(io.BytesIO(raw))
    for info in zf.infolist():
        header = parse_local_header(raw, info.header_offset)
        assert header is not None and header.name == info.filename
        start = member_data_offset(io.BytesIO(raw), info, len(raw))
        assert header.data_offset == start and raw[start : start + info.file_size] == MEMBERS[info.filename]
        assert read_local_header(io.BytesIO(raw), info.header_offset) == header
    assert raw.startswith(LOCAL_HEADER_MAGIC)


def test_no_header_and_a_short_file_are_refused_by_name():
    raw = _zip()
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo("a/data/0")
    broken = bytearray(raw)
    broken[info.header_offset] ^= 0xFF
    assert parse_local_header(bytes(broken), info.header_offset) is None
    no_header = f"record data/0: no local file header at byte {info.header_offset}"
    with pytest.raises(CorruptCheckpointError, match=no_header):
        member_data_offset(io.BytesIO(bytes(broken)), info, len(raw), "data/0")
    cut = raw[: info.header_offset + 100]
    cut_short = r"record a/data/0 should hold 200 bytes from byte \d+, but the file ends at \d+: truncated"
    with pytest.raises(CorruptCheckpointError, match=cut_short):
        member_data_offset(io.BytesIO(cut), info, len(cut))
    assert parse_local_header(raw[: info.header_offset + 10], info.header_offset) is None


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_walking_a_cut_short_zip_finds_the_members_before_the_cut(compression):
    unseekable = _Unseekable()
    with zipfile.ZipFile(unseekable, "w", compression) as zf:
        for name, data in MEMBERS.items():
            with zf.open(name, "w") as out:
                out.write(data)
    raw = unseekable.getvalue()
    header = parse_local_header(raw)
    assert header is not None and header.has_descriptor and header.compressed_size == 0
    whole = list(walk_local_headers(raw))
    assert [r.name for r in whole] == list(MEMBERS)
    for record in whole:
        stored = raw[record.data_offset : record.end]
        plain = stored if compression == zipfile.ZIP_STORED else zlib.decompress(stored, -15)
        assert plain == MEMBERS[record.name] and zlib.crc32(plain) == record.crc
    second = whole[1]
    cut = list(walk_local_headers(raw[: second.data_offset + 50]))
    assert [r.name for r in cut] == list(MEMBERS)[:2]
    assert cut[0] == whole[0] and cut[1].end > second.data_offset + 50  # cut off: reaches past the end
