"""Structure and safety checks of a ``torch.save`` file (and of the ``torch.save`` archives of a DCP
folder's chunks), reporting every fault rather than the first.

Zip files: the central directory is readable; every record's CRC-32 matches its bytes; the
records torch needs (``data.pkl``, ``version``) are there; every storage a tensor uses has its
record, complete. The local file headers are walked from the start as well, so a file cut short
(whose central directory, at the end, is gone) still names the tensors that were lost. Both
formats: every global of the pickle is checked against the allow-list by ckptkit's own unpickler,
which never imports or calls anything the pickle names.
"""

from __future__ import annotations

import mmap
import pickletools
import zipfile
from io import BytesIO
from pathlib import Path

from ckptkit.core import limits
from ckptkit.core.errors import CkptkitError, UnsupportedError, describe_read_error
from ckptkit.core.findings import Finding, error, relocated, warning
from ckptkit.formats.torch.archive import ZIP_MAGIC, _BoundedReader, extra_pickles, member_problems, zip_root
from ckptkit.formats.torch.reader import scan_findings
from ckptkit.formats.torch.structure import flatten
from ckptkit.io.checksum import crc32
from ckptkit.io.source import Source
from ckptkit.io.unpickler import SafeUnpickler
from ckptkit.io.workers import default_executor
from ckptkit.io.ziparchive import LOCAL_HEADER, ZIP_ERRORS, RecordSpan, parse_local_header, walk_local_headers

_CRC_CHUNK = 16 * 1024 * 1024


def check_structure(path: Path | Source) -> list[Finding]:
    """Every structural and pickle-safety fault of the ``torch.save`` file at ``path``.

    A file at a URL is checked on a temporary local copy: the checks walk every local header and
    CRC-32 of the zip, so they read every byte wherever the file lies."""
    if isinstance(path, Source):
        with path.local_copy() as copy:
            return relocated(check_structure(copy), copy, path.name) if path.remote else check_structure(copy)
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if not is_zip:
        return _legacy(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _zip(path, mm)


def check_dcp(path: Path) -> list[Finding]:
    """Every chunk archive of a torch.distributed.checkpoint folder against its CRC-32s.

    A folder whose ``.metadata`` or layout cannot be read gives no finding here: opening it fails
    the same way, and verify reports that.
    """
    from ckptkit.formats.torch.dcp import DcpCheckpoint, Region

    try:
        ckpt = DcpCheckpoint(path if path.is_dir() else path.parent)
    except CkptkitError:
        return []
    findings: list[Finding] = []
    with ckpt:
        for fqn, chunk, mm in ckpt.chunk_archives():
            where = f"{chunk.file} +{chunk.start}"
            try:
                with zipfile.ZipFile(Region(mm, chunk.start, chunk.length)) as zf:
                    infos = zf.infolist()
            except ZIP_ERRORS as err:
                findings.append(error("torch.zip", f"the chunk archive at {where} is not a readable zip ({err})",
                                      path, fqn))  # fmt: skip
                continue
            records: dict[str, RecordSpan] = {}
            for info in infos:
                header = parse_local_header(mm, chunk.start + info.header_offset)
                if header is None:
                    findings.append(error("torch.zip", f"record {info.filename} of the chunk archive at {where} has "
                                          "no local file header where its directory says", path, fqn))  # fmt: skip
                    continue
                records[info.filename] = RecordSpan(
                    info.filename,
                    header.data_offset,
                    info.file_size,
                    info.compress_type != zipfile.ZIP_STORED,
                    info.CRC,
                )
            findings.extend(
                error("torch.crc", f"record {record.name} of the chunk archive at {where} does not match its CRC-32: "
                      f"its bytes changed after it was written (tensor {fqn!r})", path, fqn)
                for record in _crc_mismatches(mm, records)
            )  # fmt: skip
    return findings


def _legacy(path: Path) -> list[Finding]:
    """Each of the legacy file's five pickles scanned with the same rules, every finding kept."""
    findings: list[Finding] = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        reader = _BoundedReader(f, min(size, limits.current().pickle_bytes))
        for what in _LEGACY_PICKLES:
            unpickler = SafeUnpickler(reader, strict=False)
            try:
                unpickler.load()
            except Exception as err:  # a hostile pickle can make the unpickler raise anything
                findings.extend(pf.to_finding(path) for pf in unpickler.findings)
                why = describe_read_error(err, "the pickle is malformed")
                findings.append(error("torch.pickle", f"{what} cannot be parsed to the end: {why}; the pickles after "
                                      "it were not checked", path))  # fmt: skip
                return findings
            findings.extend(pf.to_finding(path) for pf in unpickler.findings)
    try:
        scan_findings(path)
    except CkptkitError as err:
        findings.append(error("torch.pickle", err.message, path))
    return findings


_LEGACY_PICKLES = ("the magic-number pickle", "the protocol-version pickle", "the sys_info pickle", "the main pickle",
                   "the storage-key list")  # fmt: skip


def _zip(path: Path, mm: mmap.mmap) -> list[Finding]:
    findings: list[Finding] = []
    size = len(mm)
    every, damage = _records(path, mm)
    records = {r.name: r for r in every}
    if damage:
        findings.append(error(
            "torch.zip",
            f"the zip's central directory is missing or damaged ({damage}): the file was cut short or corrupted",
            path,
        ))  # fmt: skip
    root = zip_root(list(records))
    if root is None:
        findings.append(error("torch.record", "no data.pkl record: the pickle that lists the tensors is missing", path))
        return findings
    findings.extend(error("torch.member", problem, path) for problem in member_problems([r.name for r in every]))
    main = records[root + "data.pkl"]
    extras = set(extra_pickles([r.name for r in every], root))
    for member in every:
        if member.name in extras or (member.name == main.name and member != main):
            findings.extend(_other_pickle(path, mm, member))
    if root + "version" not in records and root + ".data/version" not in records:
        findings.append(error("torch.record", f"no {root}version record, which torch.load requires", path))
    users = _storage_users(path, mm, main, findings)
    for name, rec in users.items():
        record = records.get(f"{root}data/{rec}")
        if record is None:
            findings.append(error("torch.record", f"tensor {name!r}: storage record data/{rec} is missing", path, name))
        elif record.end > size:
            findings.append(error(
                "torch.truncated",
                f"tensor {name!r}: storage record data/{rec} needs bytes up to {record.end}, "
                f"but the file ends at {size}: truncated",
                path, name,
            ))  # fmt: skip
    for record in _crc_mismatches(mm, records):
        key = record.name[len(root + "data/") :] if record.name.startswith(root + "data/") else None
        names = [n for n, k in users.items() if k == key] or [""]
        findings.extend(
            error("torch.crc", f"record {record.name} does not match its CRC-32: its bytes changed after it was "
                  f"written{f' (tensor {n!r})' if n else ''}", path, n)
            for n in names
        )  # fmt: skip
    return findings


def _records(path: Path, mm: mmap.mmap) -> tuple[list[RecordSpan], str]:
    """Every record (a name given twice, twice) and where its bytes lie, and what is wrong with the central
    directory ("" if nothing).

    Records whose local header is not where the directory says (bytes removed or changed before
    them), and all records when the directory is unreadable, are found by walking the local
    headers from the start instead.
    """
    listed: list[RecordSpan] = []
    headless: list[zipfile.ZipInfo] = []
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except ZIP_ERRORS as err:
        return list(walk_local_headers(mm)), str(err)
    for info in infos:
        header = parse_local_header(mm, info.header_offset)
        if header is None and info.header_offset + LOCAL_HEADER.size <= len(mm):
            headless.append(info)
            continue
        data = len(mm) + 1 if header is None else header.data_offset  # a header cut off: the record is too
        listed.append(RecordSpan(
            info.filename, data, info.file_size, info.compress_type != zipfile.ZIP_STORED, info.CRC
        ))  # fmt: skip
    if not headless:
        return listed, ""
    first = headless[0]
    more = f", and {len(headless) - 1} more records" if len(headless) > 1 else ""
    damage = f"record {first.filename}: no local file header at byte {first.header_offset}{more}"
    walked = list(walk_local_headers(mm))
    found = {r.name for r in walked}
    return [r for r in listed if r.name not in found] + walked, damage


def _storage_users(path: Path, mm: mmap.mmap, pickle_rec: RecordSpan, findings: list[Finding]) -> dict[str, str]:
    """Each tensor's storage key, from the pickle (parsed safely); pickle findings go to ``findings``."""
    if pickle_rec.end > len(mm) or pickle_rec.compressed or pickle_rec.size > limits.current().pickle_bytes:
        findings.append(error("torch.record", "data.pkl is cut short, compressed or too large to check", path))
        return {}
    data = mm[pickle_rec.data_offset : pickle_rec.end]
    findings.extend(
        error("pickle.build-on-global", f"a BUILD opcode sets attributes on {name} itself, which would change it "
              "for everything that runs after the load; nothing was run", path)
        for name in builds_on_globals(data)
    )  # fmt: skip
    unpickler = SafeUnpickler(BytesIO(data), strict=False)
    try:
        tree = flatten(unpickler.load())
    except Exception as err:  # a hostile pickle can make the unpickler raise anything
        tree = None
        what = (
            f"data.pkl holds what ckptkit does not read: {err.message}"
            if isinstance(err, UnsupportedError)
            else f"data.pkl cannot be parsed to the end: {describe_read_error(err, 'the pickle is malformed')}"
        )
        findings.append(error("torch.pickle", f"{what}; its tensors were not checked", path))
    findings.extend(pf.to_finding(path) for pf in unpickler.findings)
    return {} if tree is None else {name: rec.storage.key for name, rec in tree.tensors.items()}


def _other_pickle(path: Path, mm: mmap.mmap, record: RecordSpan) -> list[Finding]:
    """A pickle member besides the data.pkl ckptkit reads, scanned with the same rules."""
    if record.end > len(mm) or record.compressed or record.size > limits.current().pickle_bytes:
        return [error("torch.member", f"{record.name} is a pickle ckptkit cannot check (cut short, compressed or "
                      "too large); a loader may read it", path)]  # fmt: skip
    findings = [warning("torch.member", f"{record.name} is a pickle besides data.pkl, which torch.load does not "
                        "read but other loaders may; checked with the same rules", path)]  # fmt: skip
    unpickler = SafeUnpickler(BytesIO(mm[record.data_offset : record.end]), strict=False)
    try:
        unpickler.load()
    except Exception as err:  # a hostile pickle can make the unpickler raise anything
        why = describe_read_error(err, "the pickle is malformed")
        findings.append(error("torch.pickle", f"{record.name} cannot be parsed to the end: {why}", path))
    findings.extend(pf.to_finding(path, record.name) for pf in unpickler.findings)
    return findings


def builds_on_globals(data: bytes) -> list[str]:
    """Globals that a BUILD opcode targets directly, found from the opcodes alone (nothing is built).

    ``BUILD`` is meant for a fresh instance; applied to a class or function named by ``GLOBAL`` it
    sets attributes on that global itself. Each opcode's stack effect comes from ``pickletools``.
    """
    stack: list[str | None] = []  # a global's dotted name, a string's value as "'text", else None
    marks: list[int] = []
    memo: dict[object, str | None] = {}
    found: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL":
                stack.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                both = module is not None and attr is not None and module.startswith("'") and attr.startswith("'")
                stack.append(f"{module[1:]}.{attr[1:]}" if both else None)  # type: ignore[index]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "BUILD":
                stack.pop()
                if stack[-1] is not None and not stack[-1].startswith("'"):
                    found.append(stack[-1])
            else:
                before = op.stack_before
                if pickletools.markobject in before:
                    del stack[marks.pop() :]
                    before = before[: before.index(pickletools.markobject)]
                for _ in before:
                    stack.pop()
                text = f"'{arg}" if isinstance(arg, str) and "UNICODE" in name else None
                stack.extend([text] * len(op.stack_after))
    except (ValueError, IndexError, KeyError):
        pass  # a malformed pickle: the unpickler reports it
    return list(dict.fromkeys(found))


def _crc_mismatches(mm: mmap.mmap, records: dict[str, RecordSpan]) -> list[RecordSpan]:
    """Stored records whose bytes do not match their CRC-32, on all cores (the CRC releases the GIL)."""
    stored = sorted((r for r in records.values() if not r.compressed and r.end <= len(mm)), key=lambda r: -r.size)
    view = memoryview(mm)

    def crc_of(r: RecordSpan) -> int:
        crc = 0
        for start in range(r.data_offset, r.end, _CRC_CHUNK):
            crc = crc32(view[start : min(r.end, start + _CRC_CHUNK)], crc)
        return crc

    try:
        crcs = default_executor().map(crc_of, stored)
    finally:
        view.release()
    return [r for r, crc in zip(stored, crcs, strict=True) if crc != r.crc]
