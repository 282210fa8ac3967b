"""Verifying one checkpoint file: what it is, its format's structure checks, then its tensors."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckptkit import registry
from ckptkit.core.errors import (
    CkptkitError,
    CorruptCheckpointError,
    EmptyFileError,
    LfsPointerError,
    UnknownFormatError,
    UnsupportedError,
)
from ckptkit.core.findings import Finding, TargetReport, error
from ckptkit.core.format import Format
from ckptkit.core.model import ProgressFn
from ckptkit.formats.sharded import FORMAT_NAME as FOLDER_FORMAT
from ckptkit.formats.sharded import resolve_folder
from ckptkit.io.source import Source
from ckptkit.verify.content import check_contents
from ckptkit.verify.seen import Seen

# Given a local path, or a Source for a file at a URL (formats that read URLs check those too).
StructureCheck = Callable[[Path | Source], list[Finding]]


@dataclass(frozen=True)
class Settings:
    """What the content pass needs to know; shared by single files and shards."""

    hashes: bool = False
    no_nan: bool = False
    workers: int | None = None
    progress: ProgressFn | None = None


def structure_check(fmt: Format) -> StructureCheck | None:
    """The format's structure check, imported from its ``verify`` path; ``None`` if it has none."""
    if not fmt.verify:
        return None
    module, _, func = fmt.verify.partition(":")
    check: StructureCheck = getattr(importlib.import_module(module), func)
    return check


# The input check's errors (registry.check_input, registry.detect) as verify reports them.
FILE_CHECKS: dict[type[CkptkitError], str] = {
    EmptyFileError: "file.empty",
    LfsPointerError: "file.lfs-pointer",
    UnknownFormatError: "file.format",
}


def file_finding(err: EmptyFileError | LfsPointerError | UnknownFormatError, path: Path | str) -> Finding:
    """The finding for a file the input check refused."""
    return error(FILE_CHECKS[type(err)], err.message, path)


def check_file(path: Path, report: TargetReport, settings: Settings) -> dict[str, Seen] | None:
    """Verify one file into ``report``; the tensors seen, or ``None`` if it could not be opened.

    A file no format recognises raises :class:`~ckptkit.core.errors.UnknownFormatError`: the caller
    decides whether that means verify cannot run (the file it was given) or is a finding (a shard).
    """
    report.ran("file")
    fmt = registry.detect(path) if path.is_dir() else None
    if fmt is not None and fmt.name == FOLDER_FORMAT:
        try:
            path, fmt = resolve_folder(path)  # a folder holding one checkpoint file is verified as that file
        except CkptkitError as err:
            report.files.append(str(path))
            report.add(error("file.unreadable", err.message, path))
            return None
    file = str(path)
    report.files.append(file)
    if fmt is None:
        try:
            head = registry.check_input(path)
        except (EmptyFileError, LfsPointerError) as err:
            report.add(file_finding(err, path))
            return None
        fmt = registry.detect(path, head)
    report.format = report.format or fmt.name
    check = structure_check(fmt)
    if check is not None:
        report.ran(fmt.name)
        for finding in check(path):
            report.add(finding)
    try:
        ckpt = registry.open_as(fmt, path)
    except (CorruptCheckpointError, UnsupportedError) as err:
        if not report.has_errors_for(file):
            report.add(error("file.unreadable", err.message, path))
        return None
    with ckpt:
        report.tensors += len(ckpt)
        report.bytes += ckpt.total_bytes
        return check_contents(
            ckpt, file, report,
            hashes=settings.hashes, no_nan=settings.no_nan, workers=settings.workers, progress=settings.progress,
        )  # fmt: skip


def check_remote(source: Source, report: TargetReport, settings: Settings) -> dict[str, Seen] | None:
    """:func:`check_file` for a file at a URL: the same input checks, structure checks and content
    pass, reading the file by range requests."""
    report.ran("file")
    file = source.name
    report.files.append(file)
    try:
        head = registry.check_remote_input(source)
    except (EmptyFileError, LfsPointerError) as err:
        report.add(file_finding(err, file))
        return None
    fmt = registry.detect_remote(source, head)
    report.format = report.format or fmt.name
    check = structure_check(fmt)
    if check is not None:
        report.ran(fmt.name)
        for finding in check(source):
            report.add(finding)
    try:
        ckpt = registry.open_remote_as(fmt, source)
    except (CorruptCheckpointError, UnsupportedError) as err:
        if not report.has_errors_for(file):
            report.add(error("file.unreadable", err.message, file))
        return None
    with ckpt:
        report.tensors += len(ckpt)
        report.bytes += ckpt.total_bytes
        return check_contents(
            ckpt, file, report,
            hashes=settings.hashes, no_nan=settings.no_nan, workers=settings.workers, progress=settings.progress,
        )  # fmt: skip
