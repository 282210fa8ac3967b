"""Structure and safety checks of numpy files and bare pickles, reporting every fault.

``.npy``/``.npz``: every header parses, every member is intact and named once, numeric data is
all there; an array of Python objects is a pickle, scanned with the allow-list rules of
:mod:`ckptkit.io.unpickler` (``np.load(allow_pickle=True)`` would run it). Bare pickles and joblib
files: every pickle in the file is scanned with the same rules.
"""

from __future__ import annotations

from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from ckptkit.core.errors import CkptkitError
from ckptkit.core.findings import Finding, error, relocated, warning
from ckptkit.formats.numpy.npy import MAX_HEADER, ROOT_NAME, NpyHeader, parse_header, read_header, scan_objects
from ckptkit.formats.numpy.pickled import failure_message, load_pickles, payload, pickle_label
from ckptkit.io.source import Source
from ckptkit.io.ziparchive import open_zip, read_member

_OBJECTS = (
    "array {name!r} holds Python objects, stored as a pickle: np.load refuses it unless allow_pickle=True, which "
    "runs what the pickle names; ckptkit checked it with the same rules as any pickle"
)


def check_numpy(path: Path | Source) -> list[Finding]:
    """Every fault of the ``.npy`` or ``.npz`` file at ``path`` (a file at a URL: on a temporary copy)."""
    if isinstance(path, Source):
        with path.local_copy() as copy:
            return relocated(check_numpy(copy), copy, path.name) if path.remote else check_numpy(copy)
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        return _npz(path, f) if zipped else _npy(path, f)


def _npy(path: Path, f: BinaryIO) -> list[Finding]:
    try:
        header = read_header(f, "the file")
    except CkptkitError as err:
        return [error("numpy.header", err.message, path)]
    size = path.stat().st_size
    if header.dtype.hasobject:
        f.seek(header.offset)
        return _objects(path, ROOT_NAME, f)
    if size - header.offset < header.nbytes:
        return [_truncated(path, "array", header, size - header.offset)]
    return []


def _npz(path: Path, f: BinaryIO) -> list[Finding]:
    findings: list[Finding] = []
    try:
        zf = open_zip(f, path.stat().st_size)
    except CkptkitError as err:
        return [error("numpy.zip", err.message, path)]
    with zf:
        names = zf.namelist()
        findings.extend(
            error("numpy.member", f"the archive holds {n} members named {name}; zip readers disagree about which "
                  "one counts", path)
            for name, n in Counter(names).items() if n > 1
        )  # fmt: skip
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            try:
                raw = read_member(zf, info)  # zipfile checks the CRC-32 at the member's end
                header = parse_header(raw[: MAX_HEADER + 12], info.filename)
            except CkptkitError as err:
                findings.append(error("numpy.member", err.message, path, name))
                continue
            if header.dtype.hasobject:
                findings.extend(_objects(path, name, BytesIO(raw[header.offset :])))
            elif len(raw) - header.offset < header.nbytes:
                findings.append(_truncated(path, name, header, len(raw) - header.offset))
    return findings


def _objects(path: Path, name: str, data: BinaryIO) -> list[Finding]:
    findings = [warning("numpy.object", _OBJECTS.format(name=name), path, name)]
    unpickler = scan_objects(data, strict=False)
    findings.extend(pf.to_finding(path, f"array {name!r}") for pf in unpickler.findings)
    if unpickler.failure is not None:
        findings.append(error("pickle.parse", failure_message(unpickler.failure, 0), path, name))
    return findings


def _truncated(path: Path, name: str, header: NpyHeader, held: int) -> Finding:
    return error(
        "numpy.truncated",
        f"array {name!r} ({header.dtype} {list(header.shape)}) needs {header.nbytes:,} bytes, but only "
        f"{max(held, 0):,} follow its header: truncated",
        path,
        name,
    )


def check_pickle(path: Path) -> list[Finding]:
    """Every pickle of a bare pickle or joblib file, scanned with the allow-list rules."""
    try:
        data = payload(path)
    except CkptkitError as err:
        return [error("pickle.parse", err.message, path)]
    objects, unpicklers, failure = load_pickles(data, strict=False)
    findings: list[Finding] = []
    for i, unpickler in enumerate(unpicklers):
        findings.extend(pf.to_finding(path, pickle_label(i) if i else "") for pf in unpickler.findings)
    if failure is not None:
        findings.append(error("pickle.parse", failure_message(failure, len(objects)), path))
    if len(objects) > 1:
        findings.append(warning(
            "pickle.trailing", f"the file holds {len(objects)} pickles one after another; pickle.load reads the "
            "first, a loader that calls it again reads the next; all were checked", path,
        ))  # fmt: skip
    return findings
