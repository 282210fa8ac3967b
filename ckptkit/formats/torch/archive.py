"""The two containers ``torch.save`` writes, read without touching tensor data.

* Zip (torch >= 1.6): ``<root>/data.pkl`` plus one stored member ``<root>/data/<key>`` per
  storage; ``<root>`` is any folder name (torch uses the file's stem when saving). Layout:
  ``torch/csrc/api/include/torch/serialize`` and ``caffe2/serialize/inline_container.h``.
* Legacy (torch < 1.6, or ``_use_new_zipfile_serialization=False``): five pickles in a row (magic
  number, protocol version, sys_info, the object, the sorted storage keys), then each storage as
  an 8-byte element count and its raw bytes. See ``_legacy_save`` in ``torch/serialization.py``.

Both give an :class:`Archive`: the unpickled object tree and where each storage's bytes lie.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

from ckptkit.core import limits
from ckptkit.core.errors import CorruptCheckpointError, UnsafeCheckpointError, UnsupportedError
from ckptkit.io.unpickler import PickleFinding, SafeUnpickler, StorageRef, load
from ckptkit.io.ziparchive import LOCAL_HEADER_MAGIC, member_data_offset, open_zip, parse_local_header, read_member

ZIP_MAGIC = LOCAL_HEADER_MAGIC
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_PICKLED_MAGIC = b"\x8a\x0a" + LEGACY_MAGIC_NUMBER.to_bytes(10, "little")


@dataclass(frozen=True)
class StorageSpan:
    """Where one storage's bytes lie in the file: ``nbytes`` bytes from absolute ``offset``."""

    offset: int
    nbytes: int
    record: str  # for messages: "data/3" or "storage 94350811273280"


@dataclass
class Archive:
    """A ``torch.save`` file's object tree, its pickle findings and its storages' places."""

    kind: str  # "zip" or "legacy"
    root: object
    findings: list[PickleFinding]
    big_endian: bool
    locate: Callable[[str], StorageSpan]


def is_legacy_head(head: bytes) -> bool:
    """True if ``head`` starts with the pickled magic number of a legacy ``torch.save`` file."""
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    body = head[2:]
    if body[:1] == b"\x95":  # protocol 4+ FRAME opcode and its 8-byte length
        body = body[9:]
    return body.startswith(_PICKLED_MAGIC)


def zip_root(names: list[str]) -> str | None:
    """The folder (with its slash) holding ``data.pkl`` or ``constants.pkl``, or ``None``."""
    for name in names:
        folder, _, record = name.rpartition("/")
        if record in ("data.pkl", "constants.pkl") and "/" not in folder:
            return folder + "/" if folder else ""
    return None


PICKLE_SUFFIXES = (".pkl", ".pickle")


def member_problems(names: list[str]) -> list[str]:
    """Why a torch zip's members are ambiguous: a name given twice, pickles in two root folders.

    A loader may read any of the copies (zip readers disagree on which one counts), so ckptkit
    would check one pickle and torch might load another.
    """
    problems = [
        f"the zip holds {n} members named {name}; zip readers disagree about which one counts, so a loader may "
        "read one ckptkit did not check"
        for name, n in Counter(names).items()
        if n > 1
    ]
    roots = sorted({n.rpartition("/")[0] for n in names if n.rpartition("/")[2] in ("data.pkl", "constants.pkl")
                    and n.count("/") <= 1})  # fmt: skip
    if len(roots) > 1:
        shown = ", ".join(repr(r + "/") for r in roots)
        problems.append(
            f"the zip holds a data.pkl in {len(roots)} folders ({shown}); loaders pick different ones, so a loader "
            "may read one ckptkit did not check"
        )
    return problems


def extra_pickles(names: list[str], root: str) -> list[str]:
    """Members besides ``<root>/data.pkl`` that are pickles by name: loaders and scanners may read them."""
    main = root + "data.pkl"
    return list(dict.fromkeys(n for n in names if n != main and n.lower().endswith(PICKLE_SUFFIXES)))


def first_member_name(head: bytes) -> str:
    """The file name in the zip's first local header (empty if ``head`` is too short)."""
    header = parse_local_header(head)
    return "" if header is None else header.name


def read_zip(f: BinaryIO, size: int, strict: bool) -> Archive:
    """Read a zip-format ``torch.save`` file's pickle and index its storage records."""
    zf = open_zip(f, size)
    names = zf.namelist()
    root = zip_root(names)
    if root is None:
        raise CorruptCheckpointError("the zip archive has no data.pkl record, so it is not a torch.save file")
    if root + "constants.pkl" in zf.NameToInfo or any(n.startswith(root + "code/") for n in names):
        raise UnsupportedError(
            "this is a TorchScript archive (made by torch.jit.save), not a torch.save checkpoint; load it with "
            "torch.jit.load, save its state_dict() with torch.save, and convert that file"
        )
    pickle_info = zf.NameToInfo.get(root + "data.pkl")
    if pickle_info is None:
        raise CorruptCheckpointError(f"the zip archive has no {root}data.pkl record")
    problems = member_problems(names)
    if problems:
        raise UnsafeCheckpointError(problems[0])
    for extra in extra_pickles(names, root):
        try:
            load(BytesIO(read_member(zf, zf.NameToInfo[extra], "pickle_bytes")), extra, strict=strict)
        except UnsafeCheckpointError as err:
            raise UnsafeCheckpointError(f"{extra}: {err.message}") from None
    data = read_member(zf, pickle_info, "pickle_bytes")
    big_endian = False
    order_info = zf.NameToInfo.get(root + "byteorder")
    if order_info is not None:  # absent in files from torch < 2.1, which were little-endian
        order = read_member(zf, order_info).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CorruptCheckpointError(f"the byteorder record says {order!r}, not 'little' or 'big'")
        big_endian = order == "big"
    obj, unpickler = load(BytesIO(data), "data.pkl", strict=strict)
    del data
    spans: dict[str, StorageSpan] = {}

    def locate(key: str) -> StorageSpan:
        span = spans.get(key)
        if span is None:
            span = spans[key] = _member_span(f, size, zf, root, key)
        return span

    return Archive("zip", obj, unpickler.findings, big_endian, locate)


def _member_span(f: BinaryIO, size: int, zf: zipfile.ZipFile, root: str, key: str) -> StorageSpan:
    record = f"data/{key}"
    info = zf.NameToInfo.get(root + record)
    if info is None:
        raise CorruptCheckpointError(f"the archive has no record {record} for storage {key!r}")
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedError(
            f"record {record} is compressed (method {info.compress_type}); torch.save stores tensor data "
            "uncompressed, so the file was probably re-zipped. Re-zip it with 'zip -0' or save it again with torch"
        )
    if info.flag_bits & 0x1:
        raise UnsupportedError(f"record {record} is encrypted")
    return StorageSpan(member_data_offset(f, info, size, record), info.file_size, record)


class _BoundedReader:
    """Reads of ``f`` clamped to ``size`` bytes (the file's end, or the pickle size limit).

    A buffered ``read(n)`` allocates ``n`` bytes before reading, so a length forged in a pickle
    could otherwise reserve gigabytes.
    """

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self.pos = f.tell()

    def read(self, n: int = -1, /) -> bytes:
        left = self._size - self.pos
        data = self._f.read(left if n < 0 else max(0, min(n, left)))
        self.pos += len(data)
        return data

    def readline(self, limit: int = -1, /) -> bytes:
        left = self._size - self.pos
        data = self._f.readline(left if limit < 0 else max(0, min(limit, left)))
        self.pos += len(data)
        return data


def read_legacy(f: BinaryIO, size: int, strict: bool) -> Archive:
    """Read a legacy ``torch.save`` file's pickles and find each storage by seeking past the others."""
    f.seek(0)
    cap = limits.current().pickle_bytes
    reader = _BoundedReader(f, min(size, cap))
    try:
        big_endian, obj, unpickler, keys = _legacy_pickles(reader, strict)
    except CorruptCheckpointError:
        if size > cap and reader.pos >= cap:
            raise CorruptCheckpointError(
                f"the pickles of this legacy torch.save file run past ckptkit's limit of {cap:,} bytes; if the "
                f"file is trusted, raise the limit with {limits.Limits.env_name('pickle_bytes')}"
            ) from None
        raise
    spans = _scan_legacy_storages(f, reader.pos, size, keys, unpickler.storages, big_endian)

    def locate(key: str) -> StorageSpan:
        span = spans.get(key)
        if span is None:
            raise CorruptCheckpointError(f"storage {key!r} is not among the storages stored after the pickle")
        return span

    return Archive("legacy", obj, unpickler.findings, big_endian, locate)


def _legacy_pickles(reader: _BoundedReader, strict: bool) -> tuple[bool, object, SafeUnpickler, list[str]]:
    """The legacy file's four leading pickles checked, then its object and storage keys."""
    magic, _ = load(reader, "the magic-number pickle", strict=strict)
    if magic != LEGACY_MAGIC_NUMBER:
        raise CorruptCheckpointError("the file does not start with torch's magic number")
    version, _ = load(reader, "the protocol-version pickle", strict=strict)
    if version != LEGACY_PROTOCOL_VERSION:
        raise UnsupportedError(f"legacy torch.save protocol version {version!r}; ckptkit reads version 1001")
    sys_info, _ = load(reader, "the sys_info pickle", strict=strict)
    if not isinstance(sys_info, dict):
        raise CorruptCheckpointError("the sys_info pickle is not a dict")
    big_endian = sys_info.get("little_endian", True) is False
    obj, unpickler = load(reader, "the main pickle", strict=strict)
    keys, _ = load(reader, "the storage-key list", strict=strict)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise CorruptCheckpointError("the storage-key list after the main pickle is not a list of strings")
    return big_endian, obj, unpickler, keys


def _scan_legacy_storages(
    f: BinaryIO, pos: int, size: int, keys: list[str], storages: dict[str, StorageRef], big_endian: bool
) -> dict[str, StorageSpan]:
    spans: dict[str, StorageSpan] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise CorruptCheckpointError(f"storage {key!r} is stored but no tensor in the pickle refers to it")
        f.seek(pos)
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptCheckpointError(f"the file ends before storage {key!r}: truncated?")
        count = int.from_bytes(raw, "big" if big_endian else "little")
        itemsize = ref.storage.dtype.itemsize if ref.storage.dtype else 1
        if count * itemsize != ref.nbytes:
            raise CorruptCheckpointError(
                f"storage {key!r} is stored with {count} elements, but the pickle gives it {ref.nbytes} bytes"
            )
        spans[key] = StorageSpan(pos + 8, ref.nbytes, f"storage {key}")
        pos += 8 + ref.nbytes
        if pos > size:
            raise CorruptCheckpointError(
                f"storage {key!r} ends at byte {pos}, but the file has only {size} bytes: truncated?"
            )
    return spans
